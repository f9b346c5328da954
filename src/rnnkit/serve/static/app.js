// The playground: lists the served runs and gives each a panel for its task.
"use strict";

const $ = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node[k] = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
};
const token = () => sessionStorage.getItem("rnnkit-token") || "";

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, body === undefined ? { headers } :
    { method: "POST", headers, body: JSON.stringify(body) });
  if (response.status === 401) document.getElementById("token-row").hidden = false;
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

const show = (out, text, error = false) => { out.textContent = text; out.classList.toggle("error", error); };
// A panel's answer in place of what it showed before (an error included).
const display = (out, ...nodes) => { out.classList.remove("error"); out.replaceChildren(...nodes); };
const field = (label, input) => $("label", {}, label + " ", input);
const number = (value, attrs = {}) => $("input", { type: "number", value, style: "width:6em", ...attrs });
const chosen = (input, what) => {
  if (!input.files.length) throw new Error(`choose ${what} first`);
  return input.files[0];
};
const fileBase64 = (file) => new Promise((resolve, reject) => {
  const reader = new FileReader();
  reader.onload = () => resolve(reader.result.split(",")[1]);
  reader.onerror = reject;
  reader.readAsDataURL(file);
});

async function predict(run, inputs, options = {}) {
  const response = await api(`/v1/runs/${encodeURIComponent(run.name)}/predict`, { inputs, ...options });
  return (await response.json()).outputs;
}

function probabilities(result) {
  const box = $("div");
  for (const [label, p] of Object.entries(result.probabilities)) {
    box.append($("div", {}, $("span", { class: "bar", style: `width:${Math.round(200 * p)}px` }),
      ` ${label} ${p.toFixed(3)}`));
  }
  return box;
}

function shadedTokens(result) {
  const line = $("p", { class: "tokens" });
  const top = Math.max(...result.attention);
  result.tokens.forEach((word, i) => {
    const alpha = (result.attention[i] / top).toFixed(2);
    line.append($("span", { class: "token", title: result.attention[i].toFixed(3),
      style: `background: rgba(255, 140, 0, ${alpha})` }, word), " ");
  });
  return line;
}

// A file input that shows what was chosen: an audio player for a recording, the picture.
function fileInput(accept, kind) {
  const input = $("input", { type: "file", accept }), preview = $("div", { class: "preview" });
  input.onchange = () => {
    if (!input.files.length) { preview.replaceChildren(); return; }
    const src = URL.createObjectURL(input.files[0]);
    preview.replaceChildren(kind === "audio" ? $("audio", { controls: "", src })
      : $("img", { src, alt: input.files[0].name, class: "scene" }));
  };
  return [input, preview];
}

function classifierPanel(run, panel, out) {
  const speech = run.task === "speech-digits";
  const [input, preview] = speech ? fileInput(".wav,audio/wav", "audio")
    : [$("input", { type: "text", value: "a gripping , funny and moving film" }), ""];
  panel.append(input, preview, $("button", { onclick: async () => {
    try {
      const item = speech ? { wav: await fileBase64(chosen(input, "a WAV file")) } : input.value;
      const [result] = await predict(run, [item]);
      display(out, $("p", { class: "label" }, `${result.label}`), probabilities(result));
      if (result.attention && result.tokens) out.append(shadedTokens(result));
      else if (result.attention) {
        out.append($("p", {}, "attention over the recording's frames:"), linePlot(result.attention));
      }
    } catch (err) { show(out, err.message, true); }
  } }, speech ? "Classify the recording" : "Classify"));
}

function generatePanel(run, panel, out) {
  const prompt = $("textarea", {}, "ROMEO:");
  const tokens = number(200, { min: 1 }), temperature = number(0.8, { step: 0.1, min: 0 });
  const seed = number(1);
  panel.append(prompt, field("tokens", tokens), field("temperature", temperature), field("seed", seed),
    $("button", { onclick: async () => {
      show(out, prompt.value);
      delete out.dataset.done;
      try {
        const response = await api(`/v1/runs/${encodeURIComponent(run.name)}/generate`, {
          prompt: prompt.value, max_tokens: +tokens.value, temperature: +temperature.value,
          seed: +seed.value, stream: true });
        const reader = response.body.getReader(), decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          const events = buffer.split("\n\n");
          buffer = events.pop();
          for (const event of events) {
            const data = JSON.parse(event.replace(/^data: /, ""));
            if (data.token !== undefined) out.textContent += data.token;
            if (data.error) out.append($("span", { class: "error" }, `\n(${data.error})`));
            if (data.done) out.dataset.done = "true";
          }
        }
      } catch (err) { show(out, err.message, true); }
    } }, "Generate"));
}

function attentionTable(result) {
  const table = $("table", { class: "attention" });
  const sources = result.source_tokens || result.attention[0].map((_, j) => `${j}`);
  table.append($("tr", {}, $("th"), ...sources.map((s) => $("th", {}, s))));
  result.attention.forEach((row, i) => {  // shaded by the row's largest weight
    const top = Math.max(...row) || 1;
    table.append($("tr", {}, $("th", {}, result.target_tokens[i] || ""),
      ...row.map((a) => $("td", { style: `background: rgba(30, 100, 220, ${(a / top).toFixed(2)})`, title: a.toFixed(3) }, ""))));
  });
  return table;
}

// The picture under each word's attention: a cell of the encoder's grid (2 ** stages pixels
// square) shaded by the weight the word gave it.
async function attentionMaps(result, file, stages) {
  const picture = new Image();
  picture.src = URL.createObjectURL(file);
  await picture.decode();
  const [rows, cols] = result.grid, region = 2 ** stages, zoom = 2;
  const box = $("div", { class: "maps" });
  result.attention.forEach((weights, i) => {
    const canvas = $("canvas", { width: picture.width * zoom, height: picture.height * zoom });
    const context = canvas.getContext("2d"), top = Math.max(...weights);
    context.imageSmoothingEnabled = false;
    context.drawImage(picture, 0, 0, canvas.width, canvas.height);
    weights.forEach((a, j) => {
      context.fillStyle = `rgba(255, 140, 0, ${(0.7 * a / top).toFixed(2)})`;
      context.fillRect((j % cols) * region * zoom, Math.floor(j / cols) * region * zoom,
        region * zoom, region * zoom);
    });
    box.append($("figure", {}, canvas, $("figcaption", {}, result.target_tokens[i] || "")));
  });
  return box;
}

function translatePanel(run, panel, out) {
  const caption = run.task === "caption";
  const [input, preview] = caption ? fileInput("image/png", "image")
    : [$("input", { type: "text", value: "A little girl climbs into a wooden playhouse." }), ""];
  panel.append(input, preview, $("button", { onclick: async () => {
    try {
      const file = caption ? chosen(input, "a PNG scene") : null;
      const [result] = await predict(run, [caption ? { png: await fileBase64(file) } : input.value]);
      display(out, $("p", { class: "label" }, result.text), caption && result.grid
        ? await attentionMaps(result, file, run.settings.stages) : attentionTable(result));
    } catch (err) { show(out, err.message, true); }
  } }, caption ? "Caption" : "Translate"));
}

// The posteriors (frames x symbols, the blank first) as a picture: a frame ``data-cell`` pixels
// across (2 to 12, the picture about 640 wide), a symbol a row of 10 pixels, darker where likelier.
function posteriorsPicture(result) {
  const frames = result.posteriors.length, cell = Math.max(2, Math.min(12, Math.floor(640 / frames)));
  const canvas = $("canvas", { width: cell * frames, height: 10 * result.symbols.length, "data-cell": cell });
  const context = canvas.getContext("2d");
  result.posteriors.forEach((frame, t) => frame.forEach((p, k) => {
    context.fillStyle = `rgba(34, 68, 102, ${p.toFixed(3)})`;
    context.fillRect(cell * t, 10 * k, cell, 10);
  }));
  const names = $("div", { class: "symbols" }, ...result.symbols.map((s) => $("div", {}, s === "_" ? "blank" : s)));
  return $("div", { class: "posteriors" }, names, canvas);
}

function transcribePanel(run, panel, out) {
  const [input, preview] = fileInput(".wav,audio/wav", "audio");
  panel.append(input, preview, $("button", { onclick: async () => {
    try {
      const [result] = await predict(run, [{ wav: await fileBase64(chosen(input, "a WAV file")) }]);
      display(out, $("p", { class: "label" }, result.text || "(nothing heard)"),
        $("p", {}, "each frame's probabilities of the blank and the digits:"), posteriorsPicture(result));
    } catch (err) { show(out, err.message, true); }
  } }, "Transcribe"));
}

const NS = "http://www.w3.org/2000/svg";
const svgNode = (tag, attrs) => {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
};
const figure = (v) => (Math.abs(v) >= 1e5 ? v.toExponential(3) : `${+v.toPrecision(5)}`);

// A line plot of ``series`` (nulls skipped) with the lowest and highest value and the first and
// last of ``ticks`` written on the axes; options: ``band`` [lower, upper] drawn as an area,
// ``threshold`` a dashed line, ``marks`` the indices circled in red.
function linePlot(series, { band = null, threshold = null, marks = [], ticks = null } = {}) {
  const width = 640, height = 220, left = 60, right = 10, top = 10, bottom = 24;
  const all = series.concat(band ? band.flat() : [], threshold === null ? [] : [threshold])
    .filter((v) => v !== null);
  const lo = Math.min(...all), hi = Math.max(...all), n = series.length;
  const x = (i) => left + (i * (width - left - right)) / Math.max(1, n - 1);
  const y = (v) => height - bottom - ((v - lo) * (height - top - bottom)) / (hi - lo || 1);
  const points = (values) => values.map((v, i) => (v === null ? null : `${x(i)},${y(v)}`)).filter(Boolean);
  const svg = svgNode("svg", { width, height, viewBox: `0 0 ${width} ${height}` });
  if (band) {
    svg.append(svgNode("polygon", { class: "band", fill: "rgba(70,130,220,0.25)",
      points: points(band[1]).concat(points(band[0]).reverse()).join(" ") }));
  }
  if (threshold !== null) {
    svg.append(svgNode("line", { class: "threshold", x1: left, x2: width - right, y1: y(threshold),
      y2: y(threshold), stroke: "#b00", "stroke-dasharray": "4 3" }));
  }
  svg.append(svgNode("polyline", { class: "series", fill: "none", stroke: "#246", "stroke-width": 2,
    points: points(series).join(" ") }));
  for (const i of marks) svg.append(svgNode("circle", { class: "mark", cx: x(i), cy: y(series[i]), r: 4, fill: "#d22" }));
  const text = (content, attrs) => { const t = svgNode("text", { "font-size": 11, fill: "#555", ...attrs }); t.textContent = content; return t; };
  svg.append(text(figure(hi), { x: left - 4, y: top + 8, "text-anchor": "end" }),
    text(figure(lo), { x: left - 4, y: height - bottom, "text-anchor": "end" }));
  if (ticks) {
    svg.append(text(ticks[0], { x: left, y: height - 6 }),
      text(ticks.at(-1), { x: width - right, y: height - 6, "text-anchor": "end" }));
  }
  return svg;
}

// ISO times as a person reads them: the dates alone when every time is midnight.
const readable = (times) => (times.every((t) => t.endsWith("T00:00:00"))
  ? times.map((t) => t.slice(0, -9)) : times.map((t) => t.replace("T", " ")));

function forecastTable(result, column) {
  const times = readable(result.times), interval = result.lower !== null;
  const table = $("table", { class: "values" }, $("tr", {}, $("th", {}, "time"), $("th", {}, column),
    ...(interval ? [$("th", {}, `${Math.round(100 * result.level)}% lower`), $("th", {}, "upper")] : [])));
  times.forEach((time, i) => {
    const cells = [result.mean[column][i], ...(interval ? [result.lower[column][i], result.upper[column][i]] : [])];
    table.append($("tr", {}, $("td", {}, time), ...cells.map((v) => $("td", {}, figure(v)))));
  });
  return table;
}

function forecastPanel(run, panel, out) {
  const horizon = number(run.settings.output_chunk_length || 12, { min: 1 });
  const level = number(0.9, { step: 0.05, min: 0.05, max: 0.99 });
  panel.append(field("horizon", horizon), field("interval level", level), $("button", { onclick: async () => {
    try {
      const response = await api(`/v1/runs/${encodeURIComponent(run.name)}/forecast`,
        { horizon: +horizon.value, level: +level.value });
      const result = await response.json();
      const times = readable(result.times);
      display(out, $("p", {}, `${times.length} steps after the run's series, ${times[0]} to ${times.at(-1)}`));
      for (const column of Object.keys(result.mean)) {
        const band = result.lower ? [result.lower[column], result.upper[column]] : null;
        out.append($("div", { class: "plot", "data-column": column },
          linePlot(result.mean[column], { band, ticks: times }), forecastTable(result, column)));
      }
    } catch (err) { show(out, err.message, true); }
  } }, "Forecast"));
}

function anomalyPanel(run, panel, out) {
  const input = $("input", { type: "file", accept: ".csv,text/csv" });
  panel.append(input, $("button", { onclick: async () => {
    try {
      const [result] = await predict(run, [{ csv: await fileBase64(chosen(input, "a CSV file")) }]);
      const flagged = result.flags.flatMap((f, i) => (f ? [i] : []));
      const [column] = Object.keys(result.values), ticks = readable(result.times);
      const table = $("table", { class: "values" }, $("tr", {}, $("th", {}, "time"), $("th", {}, column), $("th", {}, "score")));
      for (const i of flagged.slice(0, 50)) {
        table.append($("tr", {}, $("td", {}, ticks[i]),
          $("td", {}, figure(result.values[column][i])), $("td", {}, figure(result.scores[i]))));
      }
      display(out, $("p", { class: "label" }, `${flagged.length} of ${result.flags.length} rows `
        + `flagged (score above the threshold ${figure(result.threshold)})`),
        $("p", {}, `${column}, flagged rows circled:`), linePlot(result.values[column], { marks: flagged, ticks }),
        $("p", {}, "anomaly score and threshold:"), linePlot(result.scores, { threshold: result.threshold, ticks }),
        table, flagged.length > 50 ? $("p", {}, `and ${flagged.length - 50} more`) : "");
    } catch (err) { show(out, err.message, true); }
  } }, "Score the series"));
}

// The roll (frames x 88 keys from A0): a frame ``data-frame`` pixels across (2 to 10, the roll
// about 640 wide), a key 3 pixels high, low keys at the bottom; a line at each C.
function pianoRoll(roll) {
  const frame = Math.max(2, Math.min(10, Math.floor(640 / roll.length)));
  const canvas = $("canvas", { width: frame * roll.length, height: 3 * 88, "data-frame": frame });
  const context = canvas.getContext("2d");
  context.fillStyle = "#ddd";
  for (let p = 3; p < 88; p += 12) context.fillRect(0, 3 * (87 - p) + 2, canvas.width, 1);
  context.fillStyle = "#246";
  roll.forEach((keys, t) => keys.forEach((on, p) => { if (on) context.fillRect(frame * t, 3 * (87 - p), frame, 2); }));
  return canvas;
}

// Each run of a key's frames as one tone; a frame lasts 1 / stepsPerQuarter quarter notes, as in
// the MIDI file.
function play(roll, tempo, stepsPerQuarter) {
  const audio = new AudioContext(), step = 60 / tempo / stepsPerQuarter;
  roll.forEach((frame, t) => frame.forEach((on, p) => {
    if (!on || (t > 0 && roll[t - 1][p])) return;
    let length = 1;
    while (t + length < roll.length && roll[t + length][p]) length += 1;
    const osc = audio.createOscillator(), gain = audio.createGain();
    osc.frequency.value = 440 * 2 ** ((p + 21 - 69) / 12);
    gain.gain.value = 0.05;
    osc.connect(gain).connect(audio.destination);
    osc.start(audio.currentTime + t * step); osc.stop(audio.currentTime + (t + length) * step);
  }));
}

function musicPanel(run, panel, out) {
  const frames = number(64, { min: 1 }), seed = number(1), tempo = number(80, { min: 1 });
  const perQuarter = run.settings.steps_per_quarter || 1;
  panel.append(field("frames", frames), field("seed", seed), field("tempo", tempo), $("button", { onclick: async () => {
    try {
      const response = await api(`/v1/runs/${encodeURIComponent(run.name)}/compose`,
        { frames: +frames.value, seed: +seed.value, tempo: +tempo.value, format: "json" });
      const result = await response.json();
      const link = $("a", { href: "data:audio/midi;base64," + result.midi, download: `${run.name}.mid`,
        class: "download" }, "download the MIDI");
      display(out, $("p", { class: "summary" }, `${result.frames} frames, ${result.notes} notes; `, link, " ",
        $("button", { onclick: () => play(result.piano_roll, result.tempo, perQuarter) }, "play")),
        pianoRoll(result.piano_roll));
    } catch (err) { show(out, err.message, true); }
  } }, "Compose"));
}

const PANELS = { "charlm": generatePanel, "sentiment": classifierPanel, "speech-digits": classifierPanel,
  "speech-ctc": transcribePanel, "translate": translatePanel, "caption": translatePanel,
  "forecast": forecastPanel, "anomaly": anomalyPanel, "music": musicPanel };

function panelFor(run) {
  const figures = Object.entries(run.figures || {})
    .filter(([k, v]) => typeof v === "number" && !["step", "elapsed"].includes(k))
    .map(([k, v]) => `${k} ${+v.toFixed(4)}`).join(", ");
  const out = $("div", { class: "output", "data-run": run.name });
  const panel = $("section", { class: "run", id: `run-${run.name}`, "data-task": run.task },
    $("h2", {}, run.name), $("div", { class: "meta" }, `${run.task}${figures ? "; " + figures : ""}`));
  const build = PANELS[run.task];
  if (build) build(run, panel, out); else panel.append($("p", {}, "predict through the API: POST /v1/runs/" + run.name + "/predict"));
  panel.append(out);
  return panel;
}

async function load() {
  const status = document.getElementById("status");
  try {
    const { runs } = await (await api("/v1/runs")).json();
    document.getElementById("runs").replaceChildren(...runs.map(panelFor));
    status.textContent = `${runs.length} run(s): ${runs.map((r) => r.name).join(", ")}`;
  } catch (err) { show(status, err.message, true); }
}

document.getElementById("token-save").onclick = () => {
  sessionStorage.setItem("rnnkit-token", document.getElementById("token").value);
  document.getElementById("token-row").hidden = true;
  load();
};
load();
