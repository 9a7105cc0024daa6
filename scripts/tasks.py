"""The embedded model's checkable tasks: text chats, pillow-rendered images and espeak-ng speech.

Training (`scripts/train_embedded.py`) draws from these; the held-out evaluation sets shipped in
`models/embedded/eval/` were written from them with other seeds. Every answer is a short string, so
a person (and `phi4edge eval`) can check it.
"""
from __future__ import annotations

import io
import random
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DIGITS = "zero one two three four five six seven eight nine".split()
COLORS = {"red": (220, 30, 30), "green": (30, 160, 40), "blue": (30, 60, 220),
          "yellow": (235, 200, 0), "purple": (140, 40, 170), "orange": (245, 130, 0)}
SHAPES = ["circle", "square", "triangle", "diamond"]
WORDS = DIGITS + list(COLORS) + SHAPES

IMAGE_QUESTIONS = {"color": "What color is the shape?", "shape": "What shape is this?"}
SPEECH_PROMPT = "Transcribe the audio."
NO_IMAGE = "I cannot see an image."
NO_AUDIO = "I cannot hear any audio."
FACTS = {"What color is grass?": "green", "What color is the sky?": "blue", "What color is the sun?": "yellow",
         "What color is a tomato?": "red", "What color is an orange?": "orange", "What color is a plum?": "purple",
         "How many sides does a triangle have?": "three", "How many sides does a square have?": "four",
         "How many corners does a diamond have?": "four", "Which shape is round?": "circle"}

# ---- text --------------------------------------------------------------------------------------

READ_PROMPT = "Read the words."
FILLER = "-"
# Kinds of text item and their shares. Copying (repeat, read) is most of the mix: a tiny language
# model that cannot copy gets the speech words right but in the wrong order or count, and only
# text at lr 1e-3 with copying as ~60% of the mix made it copy reliably. The refusals are as
# common as in the first recipe (2/7), and half of them follow a word sequence: the base model
# must refuse "Transcribe the audio." and image questions whatever precedes them, so that reading
# media stays the adapters' skill (the real base model, too, answers that it hears no audio).
TEXT_KINDS = {"repeat": 0.3, "read": 0.3, "no_image": 0.14, "no_audio": 0.14,
              "count": 0.03, "next": 0.03, "previous": 0.03, "fact": 0.03}


def words(rng: random.Random, most: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randrange(1, most + 1))]


def frames(rng: random.Random, spoken: list[str]) -> str:
    """Words as the speech encoder's 80 ms frames show them: each over 1-2 frames among runs of
    fillers (silence, the CTC blank), and a filler between two runs of the same word, as CTC needs."""
    out = [FILLER] * rng.randrange(0, 7)
    for word, after in zip(spoken, spoken[1:] + [None]):
        out += [word] * rng.randrange(1, 3) + [FILLER] * rng.randrange(int(word == after), 7)
    return " ".join(out)


def text_item(rng: random.Random) -> tuple[str, str]:
    """(user prompt, assistant answer) for the language model's text stage."""
    kind = rng.choices(list(TEXT_KINDS), weights=list(TEXT_KINDS.values()))[0]
    if kind == "count":
        start = rng.randrange(0, 8)
        n = rng.randrange(2, 11 - start)
        return f"Count from {DIGITS[start]} to {DIGITS[start + n - 1]}.", " ".join(DIGITS[start:start + n])
    if kind == "next":
        i = rng.randrange(0, 9)
        return f"What number comes after {DIGITS[i]}?", DIGITS[i + 1]
    if kind == "previous":
        i = rng.randrange(1, 10)
        return f"What number comes before {DIGITS[i]}?", DIGITS[i - 1]
    if kind == "repeat":
        said = " ".join(words(rng, 8))
        return f"Repeat after me: {said}.", said
    if kind == "read":
        said = words(rng, 4)
        return f"{frames(rng, said)} {READ_PROMPT}", " ".join(said)
    if kind == "fact":
        q = rng.choice(list(FACTS))
        return q, FACTS[q]
    return refusal_item(rng, "image" if kind == "no_image" else "audio", rng.random() < 0.5)


def refusal_item(rng: random.Random, media: str, after_words: bool = True) -> tuple[str, str]:
    """A text-only model asked about an image or audio it cannot see or hear, alone or after words."""
    question, answer = ((rng.choice(list(IMAGE_QUESTIONS.values())), NO_IMAGE) if media == "image"
                        else (SPEECH_PROMPT, NO_AUDIO))
    return (f"{frames(rng, words(rng, 4))} {question}" if after_words else question), answer


def chat_text(prompt: str, answer: str) -> str:
    return f"<|user|>{prompt}<|end|><|assistant|>{answer}<|end|>"


def tokenizer_corpus() -> str:
    """Text the tokenizer is trained on: every prompt and answer form the tasks use."""
    rng = random.Random(0)
    lines = [chat_text(*text_item(rng)) for _ in range(3000)]
    lines += [chat_text(q, "") for q in IMAGE_QUESTIONS.values()] + [" ".join(WORDS)]
    return "\n".join(lines)


# ---- images ------------------------------------------------------------------------------------

@dataclass
class ImageItem:
    image: Image.Image
    question: str
    answer: str
    color: str
    shape: str


def _background(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    shade = rng.randrange(215, 256)
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, rng.uniform(0, 8), (size[1], size[0], 3))
    return Image.fromarray(np.clip(shade + noise, 0, 255).astype(np.uint8))


def _shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)


def image_size(rng: random.Random) -> tuple[int, int]:
    """60-336 pixels a side, aspect ratio within 0.6..1.67 (the global view squashes to a square)."""
    w = rng.randrange(60, 337)
    return w, int(np.clip(w * rng.uniform(0.6, 1.67), 60, 336))


def image_item(rng: random.Random, size: tuple[int, int] | None = None) -> ImageItem:
    """A shape of some colour on a noisy light background, asked for its colour or its shape; sizes
    and aspect ratios vary so that the dynamic-HD crop grid runs from 1x1 to 3x3 crops of 112 pixels.
    (A third question, a written digit in 13 fonts, held the whole image task at 50% accuracy
    after 1000 steps, so it was left out to fit the training budget; so were aspect ratios beyond
    5:3 and heavy background noise, under which shape stayed at chance.)"""
    w, h = size or image_size(rng)
    img = _background(rng, (w, h))
    draw = ImageDraw.Draw(img)
    side = min(w, h) * rng.uniform(0.45, 0.85)
    x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
    kind = "shape" if rng.random() < 0.6 else "color"   # shape is the harder skill: asked more often
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    jitter = tuple(int(np.clip(c + rng.randrange(-25, 26), 0, 255)) for c in COLORS[color])
    _shape(draw, shape, (x0, y0, x0 + side, y0 + side), jitter)
    answer = color if kind == "color" else shape
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.5:   # JPEG artefacts, as the shipped evaluation images have
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=rng.randrange(60, 95))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return ImageItem(img, IMAGE_QUESTIONS[kind], answer, color, shape)


# ---- speech ------------------------------------------------------------------------------------

VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan"]
VARIANTS = ["", "+m1", "+m2", "+m3", "+m4", "+f1", "+f2", "+f3", "+f4", "+klatt"]
SAMPLE_RATES = [8000, 16000, 22050, 44100]


@dataclass
class SpeechItem:
    wave: np.ndarray   # float32 mono at `rate`
    rate: int
    text: str


def espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    return path


def speech_item(rng: random.Random, exe: str) -> SpeechItem:
    """1-4 words from the task vocabulary, spoken by espeak-ng in a random voice, speed and pitch,
    with background noise, at one of several sample rates."""
    import soundfile
    import soxr
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 5)))
    voice = rng.choice(VOICES) + rng.choice(VARIANTS)
    wav = subprocess.run([exe, "-v", voice, "-s", str(rng.randrange(120, 221)), "-p", str(rng.randrange(25, 76)),
                          "--stdout", text], check=True, capture_output=True).stdout
    wave, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    target = rng.choice(SAMPLE_RATES)
    wave = soxr.resample(wave, rate, target).astype(np.float32) * rng.uniform(0.3, 1.0)
    lead = np.zeros(int(target * rng.uniform(0.0, 0.3)), np.float32)
    wave = np.concatenate([lead, wave, np.zeros(int(target * rng.uniform(0.05, 0.3)), np.float32)])
    rms = float(np.sqrt(np.mean(wave ** 2))) or 1e-3
    snr_db = rng.uniform(12, 40)
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, rms / 10 ** (snr_db / 20), len(wave))
    return SpeechItem(np.clip(wave + noise, -1, 1).astype(np.float32), target, text)
