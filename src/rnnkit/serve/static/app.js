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
const field = (label, input) => $("label", {}, label + " ", input);
const number = (value, attrs = {}) => $("input", { type: "number", value, style: "width:6em", ...attrs });
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

function classifierPanel(run, panel, out) {
  const speech = run.task === "speech-digits";
  const input = speech ? $("input", { type: "file", accept: ".wav,audio/wav" })
    : $("input", { type: "text", value: "a gripping , funny and moving film" });
  panel.append(input, $("button", { onclick: async () => {
    try {
      const item = speech ? { wav: await fileBase64(input.files[0]) } : input.value;
      const [result] = await predict(run, [item]);
      out.replaceChildren($("p", { class: "label" }, `${result.label}`), probabilities(result));
      if (result.attention && result.tokens) out.append(shadedTokens(result));
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
  result.attention.forEach((row, i) => {
    table.append($("tr", {}, $("th", {}, result.target_tokens[i] || ""),
      ...row.map((a) => $("td", { style: `background: rgba(30, 100, 220, ${a.toFixed(2)})`, title: a.toFixed(3) }, ""))));
  });
  return table;
}

function translatePanel(run, panel, out) {
  const caption = run.task === "caption";
  const input = caption ? $("input", { type: "file", accept: "image/png" })
    : $("input", { type: "text", value: "Go." });
  panel.append(input, $("button", { onclick: async () => {
    try {
      const item = caption ? { png: await fileBase64(input.files[0]) } : input.value;
      const [result] = await predict(run, [item]);
      out.replaceChildren($("p", { class: "label" }, result.text), attentionTable(result));
    } catch (err) { show(out, err.message, true); }
  } }, caption ? "Caption" : "Translate"));
}

function transcribePanel(run, panel, out) {
  const input = $("input", { type: "file", accept: ".wav,audio/wav" });
  panel.append(input, $("button", { onclick: async () => {
    try {
      const [result] = await predict(run, [{ wav: await fileBase64(input.files[0]) }]);
      show(out, result.text || "(nothing heard)");
    } catch (err) { show(out, err.message, true); }
  } }, "Transcribe"));
}

function linePlot(series, band) {
  const width = 640, height = 240, pad = 30;
  const all = series.concat(band ? band.flat() : []).filter((v) => v !== null);
  const lo = Math.min(...all), hi = Math.max(...all), n = series.length;
  const x = (i) => pad + (i * (width - 2 * pad)) / Math.max(1, n - 1);
  const y = (v) => height - pad - ((v - lo) * (height - 2 * pad)) / (hi - lo || 1);
  const ns = "http://www.w3.org/2000/svg", svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width); svg.setAttribute("height", height);
  if (band) {
    const upper = band[1].map((v, i) => `${x(i)},${y(v)}`), lower = band[0].map((v, i) => `${x(i)},${y(v)}`).reverse();
    const area = document.createElementNS(ns, "polygon");
    area.setAttribute("points", upper.concat(lower).join(" ")); area.setAttribute("fill", "rgba(70,130,220,0.25)");
    svg.append(area);
  }
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", series.map((v, i) => `${x(i)},${y(v)}`).join(" "));
  line.setAttribute("fill", "none"); line.setAttribute("stroke", "#246"); line.setAttribute("stroke-width", "2");
  svg.append(line);
  return svg;
}

function forecastPanel(run, panel, out) {
  const horizon = number(run.settings.output_chunk_length || 12, { min: 1 });
  panel.append(field("horizon", horizon), $("button", { onclick: async () => {
    try {
      const response = await api(`/v1/runs/${encodeURIComponent(run.name)}/forecast`, { horizon: +horizon.value });
      const result = await response.json();
      const column = Object.keys(result.mean)[0];
      const band = result.lower ? [result.lower[column], result.upper[column]] : null;
      out.replaceChildren($("p", {}, `${column}: ${result.times[0]} .. ${result.times.at(-1)}`),
        linePlot(result.mean[column], band));
    } catch (err) { show(out, err.message, true); }
  } }, "Forecast"));
}

function anomalyPanel(run, panel, out) {
  const input = $("input", { type: "file", accept: ".csv,text/csv" });
  panel.append(input, $("button", { onclick: async () => {
    try {
      const [result] = await predict(run, [{ csv: await fileBase64(input.files[0]) }]);
      const flagged = result.flags.reduce((a, f) => a + f, 0);
      out.replaceChildren($("p", {}, `${flagged} of ${result.flags.length} rows flagged (threshold ${result.threshold.toFixed(3)})`),
        linePlot(result.scores, null));
    } catch (err) { show(out, err.message, true); }
  } }, "Score the series"));
}

function pianoRoll(roll) {
  const canvas = $("canvas", { width: Math.max(200, roll.length * 4), height: 176 });
  const context = canvas.getContext("2d");
  context.fillStyle = "#246";
  roll.forEach((frame, t) => frame.forEach((on, p) => { if (on) context.fillRect(t * 4, 174 - 2 * p, 4, 2); }));
  return canvas;
}

function play(roll, tempo) {
  const audio = new AudioContext(), step = 60 / tempo / 4;
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
  const frames = number(64, { min: 1 }), seed = number(1);
  panel.append(field("frames", frames), field("seed", seed), $("button", { onclick: async () => {
    try {
      const response = await api(`/v1/runs/${encodeURIComponent(run.name)}/compose`,
        { frames: +frames.value, seed: +seed.value, format: "json" });
      const result = await response.json();
      const link = $("a", { href: "data:audio/midi;base64," + result.midi, download: `${run.name}.mid` }, "download the MIDI");
      out.replaceChildren($("p", {}, `${result.notes} notes; `, link, " ",
        $("button", { onclick: () => play(result.piano_roll, result.tempo) }, "play")), pianoRoll(result.piano_roll));
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
