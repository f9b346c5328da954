"""Polyphonic music as piano rolls: the JSB chorales JSON, folders of MIDI files, MIDI out, PNG.

A piano roll is a float tensor (T, K) of zeros and ones: T frames (time steps of a fixed length in
quarter notes), K = 88 keys, column k the MIDI pitch ``LOWEST + k`` (21 = A0 .. 108 = C8, the
piano). A frame says which keys sound during it; a note held over several frames is one run of
ones (the representation does not tell a held note from a repeated one).

Sources:

- the JSB chorales JSON (``{"train": [...], "valid": [...], "test": [...]}``, each piece a list of
  frames, each frame a list of sounding MIDI pitches), one frame per quarter note, with the
  official split of Boulanger-Lewandowski et al. (2012) (`read_jsb_json`);
- a folder of MIDI files (`read_midi_folder`): every ``.mid``/``.midi`` under it, all tracks and
  channels but the drum channel merged, quantised to ``steps_per_quarter`` frames per quarter
  note, and split 80/10/10 into train/valid/test by a fixed shuffle of the sorted names.

Notes outside the 88 keys are dropped, and a warning gives their count. `midi_bytes` turns a roll
back into a playable MIDI file (a held run of ones is one note) and `roll_png` draws it.
"""

from __future__ import annotations

import io
import os
import random
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from rnnkit.data.bounded import load_json, message_of, read_capped
from rnnkit.errors import RnnkitError, shorten

KEYS = 88
LOWEST = 21  # MIDI pitch of key 0 (A0); key 87 is 108 (C8)
SPLITS = ("train", "valid", "test")
MIDI_SUFFIXES = (".mid", ".midi")
DRUM_CHANNEL = 9  # General MIDI percussion (channel 10 counted from 1)

MAX_FRAMES = 100_000
"""Frames of one piece (a roll of 35 MB): a real piece has some thousands (an hour at 120 beats
per minute and 4 steps per quarter note is 28,800). Checked from the note times before the roll
is built, so a 37-byte MIDI file whose one note lasts 2^28 ticks is refused, not allocated."""
MAX_TOTAL_FRAMES = 5_000_000
"""Frames of all the pieces of one data set (1.8 GB of rolls): the JSB chorales have 25,000; a
folder of tiny MIDI files each just under `MAX_FRAMES` is refused before it fills memory."""
MAX_MIDI_BYTES = 8 << 20
"""Bytes of one MIDI file (8 MiB, about 2 million events, 0.7 GB once parsed by mido): a piano
piece of MAESTRO is well under 1 MB."""


@dataclass
class MusicData:
    """Piano rolls (each (T, 88) float 0/1) of the three splits, and where they came from."""

    train: list[Tensor]
    valid: list[Tensor]
    test: list[Tensor]
    source: str
    steps_per_quarter: int = 1

    def split(self, name: str) -> list[Tensor]:
        """The pieces of split ``name`` ("train", "valid" or "test")."""
        if name not in SPLITS:
            raise RnnkitError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)


def roll_from_pitches(frames: Sequence[Iterable[int]]) -> tuple[Tensor, int]:
    """A roll (T, 88) from T lists of MIDI pitches, and how many pitches fell outside 21..108."""
    roll = torch.zeros(len(frames), KEYS)
    dropped = 0
    for t, pitches in enumerate(frames):
        for pitch in pitches:
            if LOWEST <= pitch < LOWEST + KEYS:
                roll[t, pitch - LOWEST] = 1.0
            else:
                dropped += 1
    return roll, dropped


def pitches_from_roll(roll: Tensor) -> list[list[int]]:
    """The inverse of `roll_from_pitches`: for each frame of (T, 88), its sounding MIDI pitches."""
    return [[LOWEST + int(k) for k in frame.nonzero().flatten()] for frame in roll]


def _warn_dropped(dropped: int, source: str) -> None:
    if dropped:
        warnings.warn(
            f"{source}: dropped {dropped} note(s) outside the 88 piano keys "
            f"(MIDI {LOWEST}..{LOWEST + KEYS - 1})",
            stacklevel=3,
        )


# --- the JSB chorales JSON ----------------------------------------------------------------------


def read_jsb_json(path: str | os.PathLike) -> MusicData:
    """The pieces of a JSB-chorales-style JSON file, one frame per quarter note.

    Raises:
        RnnkitError: the file is missing, not JSON (or larger than
            `rnnkit.data.bounded.MAX_JSON_BYTES`), lacks a split, a split is empty, a piece is
            not a list of frames of integer MIDI pitches (the message says where), or a piece
            or the whole set is longer than `MAX_FRAMES` / `MAX_TOTAL_FRAMES`.
    """
    path = Path(path)
    if not path.is_file():
        raise RnnkitError(f"music file {path} does not exist; give the JSB chorales JSON file")
    doc = load_json(path, "give the JSB chorales JSON")
    if not isinstance(doc, dict) or any(not isinstance(doc.get(s), list) for s in SPLITS):
        raise RnnkitError(
            f"{path} must hold a JSON object with lists 'train', 'valid' and 'test' of pieces "
            "(each a list of frames, each a list of MIDI pitches)"
        )
    splits, dropped, total = {}, 0, 0
    for name in SPLITS:
        if not doc[name]:
            raise RnnkitError(f"{path}: split {name!r} has no pieces")
        splits[name] = []
        for i, piece in enumerate(doc[name]):
            where = f"{path}: {name}[{i}]"
            total = _count_frames(len(piece) if isinstance(piece, list) else 0, total, where)
            roll, n = roll_from_pitches(_check_piece(piece, where))
            splits[name].append(roll)
            dropped += n
    _warn_dropped(dropped, str(path))
    return MusicData(**splits, source=str(path))


def _count_frames(frames: int, total: int, where: str, fix: str = "cut it into parts") -> int:
    """``total + frames``, after checking a piece of ``frames`` frames against `MAX_FRAMES` and
    the new total against `MAX_TOTAL_FRAMES` (RnnkitError naming ``where``)."""
    if frames > MAX_FRAMES:
        raise RnnkitError(f"{where} would be {frames:,} frames long, more than the {MAX_FRAMES:,} "
                          f"rnnkit reads per piece; {fix}")  # fmt: skip
    if total + frames > MAX_TOTAL_FRAMES:
        raise RnnkitError(f"{where} takes the pieces past {MAX_TOTAL_FRAMES:,} frames in all, "
                          "more than rnnkit reads in one data set; give fewer or shorter "
                          "pieces")  # fmt: skip
    return total + frames


def _check_piece(piece: object, where: str) -> list[list[int]]:
    """``piece`` as a list of frames of int pitches, or RnnkitError naming ``where``."""
    if not isinstance(piece, list) or not piece:
        raise RnnkitError(f"{where} is not a non-empty list of frames")
    frames = []
    for t, frame in enumerate(piece):
        ok = isinstance(frame, list) and all(
            (isinstance(p, int) and not isinstance(p, bool))
            or (isinstance(p, float) and p.is_integer())
            for p in frame
        )
        if not ok:
            raise RnnkitError(f"{where}[{t}] is not a list of integer MIDI pitches: "
                              f"{shorten(frame)}")  # fmt: skip
        frames.append([int(p) for p in frame])
    return frames


# --- MIDI in -------------------------------------------------------------------------------------


def read_midi(path: str | os.PathLike, steps_per_quarter: int = 1) -> Tensor:
    """The piano roll (T, 88) of a MIDI file, ``steps_per_quarter`` frames per quarter note.

    All tracks and channels are merged except the drum channel. A note covers the frames from
    its start to its end, each rounded to the nearest frame boundary, and at least one frame.

    Raises:
        RnnkitError: the file is missing, not a MIDI file (or larger than `MAX_MIDI_BYTES`),
            has no (pitched) notes, or would be longer than `MAX_FRAMES`.
    """
    notes, frames = midi_piece(path, steps_per_quarter)
    _count_frames(frames, 0, str(path), _SHORTER)
    return _roll_of(notes, frames)


_SHORTER = "check its note times, cut the piece or lower --steps-per-quarter"


def midi_piece(
    path: str | os.PathLike, steps_per_quarter: int = 1
) -> tuple[list[tuple[int, int, int]], int]:
    """The notes of a MIDI file within the 88 keys as (key 0..87, first frame, end frame), and
    the length T of its roll in frames, without building the roll (see `read_midi`)."""
    if steps_per_quarter < 1:
        raise RnnkitError(f"steps per quarter note must be >= 1, got {steps_per_quarter}")
    midi = _open_midi(Path(path))
    if midi.ticks_per_beat < 1:
        raise RnnkitError(f"{path} counts time in SMPTE frames, not ticks per quarter note; "
                          "export it again with ticks per quarter note")  # fmt: skip
    notes = _midi_notes(midi, path)
    step = midi.ticks_per_beat / steps_per_quarter
    kept = [(p - LOWEST, round(s / step), round(e / step)) for p, s, e in notes
            if LOWEST <= p < LOWEST + KEYS]  # fmt: skip
    _warn_dropped(len(notes) - len(kept), str(path))
    if not kept:
        raise RnnkitError(f"{path} has no notes within the 88 piano keys; nothing to learn from")
    return kept, max(max(start + 1, end) for _, start, end in kept)


def _roll_of(notes: list[tuple[int, int, int]], frames: int) -> Tensor:
    """The roll (frames, 88) of notes (key, first frame, end frame) from `midi_piece`."""
    roll = torch.zeros(frames, KEYS)
    for key, start, end in notes:
        roll[start : max(start + 1, end), key] = 1.0
    return roll


def _open_midi(path: Path):
    import mido

    if not path.is_file():
        raise RnnkitError(f"MIDI file {path} does not exist; check the path")
    data = read_capped(path, MAX_MIDI_BYTES, "give a shorter piece", compression="plain")
    try:
        return mido.MidiFile(file=io.BytesIO(data))
    except (OSError, EOFError, ValueError, KeyError, IndexError) as err:
        raise RnnkitError(f"{path} is not a readable MIDI file ({message_of(err)})") from None


def _midi_notes(midi, path: str | os.PathLike) -> list[tuple[int, int, int]]:
    """(pitch, start tick, end tick) of every pitched note of a `mido.MidiFile`; RnnkitError if
    there is none."""
    notes = []
    for track in midi.tracks:
        tick, sounding = 0, {}  # (channel, pitch) -> start ticks of the notes still sounding
        for msg in track:
            tick += msg.time
            if msg.type not in ("note_on", "note_off") or msg.channel == DRUM_CHANNEL:
                continue
            key = (msg.channel, msg.note)
            if msg.type == "note_on" and msg.velocity > 0:
                sounding.setdefault(key, []).append(tick)
            elif sounding.get(key):
                notes.append((msg.note, sounding[key].pop(0), tick))
        notes += [(pitch, s, tick) for (_, pitch), starts in sounding.items() for s in starts]
    if not notes:
        raise RnnkitError(f"{path} has no notes (drums aside); give a MIDI file with music in it")
    return notes


def midi_files(folder: str | os.PathLike) -> list[Path]:
    """The MIDI files (``.mid``, ``.midi``, any case) under ``folder``, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RnnkitError(f"{folder} is not a folder; give a folder of MIDI files")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES)
    if not files:
        raise RnnkitError(
            f"no MIDI files (.mid, .midi) in {folder}; put your MIDI files there or give the "
            "JSB chorales JSON file"
        )
    return files


def read_midi_folder(folder: str | os.PathLike, steps_per_quarter: int = 1) -> MusicData:
    """Every MIDI file under ``folder`` as rolls, split 80/10/10 (at least one piece each).

    The split is a shuffle of the sorted file names with a fixed seed, so it is the same on
    every machine. Raises RnnkitError for an empty folder, fewer than 3 files, or a bad file.
    """
    files = midi_files(folder)
    if len(files) < 3:
        raise RnnkitError(
            f"{folder} holds {len(files)} MIDI file(s); at least 3 are needed for the "
            "train/valid/test split"
        )
    rolls, total = [], 0
    for path in files:
        notes, frames = midi_piece(path, steps_per_quarter)
        total = _count_frames(frames, total, str(path), _SHORTER)
        rolls.append(_roll_of(notes, frames))
    order = list(range(len(rolls)))
    random.Random(0).shuffle(order)
    held = max(1, len(rolls) // 10)
    valid, test, train = order[:held], order[held : 2 * held], order[2 * held :]
    pick = lambda idx: [rolls[i] for i in sorted(idx)]  # noqa: E731
    return MusicData(pick(train), pick(valid), pick(test), str(folder), steps_per_quarter)


def read_music(path: str | os.PathLike, steps_per_quarter: int = 1) -> MusicData:
    """A folder of MIDI files (`read_midi_folder`) or a JSB-style JSON file (`read_jsb_json`)."""
    path = Path(path)
    if path.is_dir():
        return read_midi_folder(path, steps_per_quarter)
    if path.suffix.lower() in MIDI_SUFFIXES:
        raise RnnkitError(
            f"{path} is a single MIDI file; put your MIDI files (at least 3) in a folder and "
            "give the folder"
        )
    if path.exists() and path.suffix.lower() != ".json":
        raise RnnkitError(f"{path} is neither a .json file nor a folder of MIDI files")
    if steps_per_quarter != 1:
        raise RnnkitError("the JSB JSON has one frame per quarter note; use --steps-per-quarter 1")
    return read_jsb_json(path)


# --- batches ------------------------------------------------------------------------------------


def pad_rolls(rolls: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack rolls of different lengths: (T_max, B, 88) zero-padded, and lengths (B,) int64."""
    lengths = torch.tensor([r.shape[0] for r in rolls], dtype=torch.long)
    return torch.nn.utils.rnn.pad_sequence(list(rolls)), lengths


def transpose_roll(roll: Tensor, semitones: int) -> Tensor:
    """``roll`` (T, 88) shifted by ``semitones`` (notes pushed off the keyboard are lost)."""
    out = torch.zeros_like(roll)
    if semitones >= 0:
        out[:, semitones:] = roll[:, : KEYS - semitones]
    else:
        out[:, :semitones] = roll[:, -semitones:]
    return out


# --- MIDI and pictures out ----------------------------------------------------------------------


def midi_bytes(
    roll: Tensor,
    tempo: float = 80.0,
    steps_per_quarter: int = 1,
    velocity: int = 80,
    program: int = 0,
) -> bytes:
    """``roll`` (T, 88) as a standard MIDI file (format 0) at ``tempo`` quarter notes per minute.

    Each run of ones in a column is one note; ``program`` is the General MIDI instrument
    (0: acoustic grand piano). The file lasts all T frames, trailing silence included.
    """
    import mido

    ticks = 480  # per quarter note
    step = ticks // steps_per_quarter
    events = []  # (tick, 0 for note_off / 1 for note_on, pitch)
    for key in roll.any(0).nonzero().flatten().tolist():
        column = torch.cat([torch.zeros(1), roll[:, key].float(), torch.zeros(1)])
        edges = column.diff().nonzero().flatten().tolist()  # starts and ends of runs, in order
        for start, end in zip(edges[::2], edges[1::2]):
            events += [(start * step, 1, LOWEST + key), (end * step, 0, LOWEST + key)]
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo), time=0))
    track.append(mido.Message("program_change", program=program, time=0))
    now = 0
    for tick, on, pitch in sorted(events):
        kind, vel = ("note_on", velocity) if on else ("note_off", 0)
        track.append(mido.Message(kind, note=pitch, velocity=vel, time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=max(0, roll.shape[0] * step - now)))
    buf = io.BytesIO()
    mido.MidiFile(type=0, ticks_per_beat=ticks, tracks=[track]).save(file=buf)
    return buf.getvalue()


def roll_png(roll: Tensor, title: str = "", prime: int = 0) -> bytes:
    """A PNG picture of ``roll`` (T, 88): time across, pitch up; the first ``prime`` frames
    (a primer) grey, the rest black."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    used = roll.any(0).nonzero().flatten()
    low, high = (int(used.min()), int(used.max())) if len(used) else (39, 63)
    low, high = max(0, low - 2), min(KEYS - 1, high + 2)
    fig = Figure(figsize=(max(6.0, roll.shape[0] / 10), 4.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = roll[:, low : high + 1].T.float().numpy().copy()
    image[:, :prime] *= 0.45  # the primer in grey, the composed part in black
    ax.imshow(image, origin="lower", aspect="auto", cmap="Greys", vmin=0, vmax=1,
              extent=(0, roll.shape[0], LOWEST + low - 0.5, LOWEST + high + 0.5))  # fmt: skip
    if prime:
        ax.axvline(prime, color="tab:red", lw=1)
    ax.set_xlabel("frame")
    ax.set_ylabel("MIDI pitch (60 = middle C)")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
