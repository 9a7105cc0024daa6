"""Train the embedded tiny Phi-4-multimodal with the paper's recipe and write it in the original
checkpoint layout, with its held-out evaluation sets and demo samples.

    python -m scripts.train_embedded -o models/embedded      (needs torch, transformers,
                                                                       peft and espeak-ng)
Stages (after Phi-4-multimodal, section 2): 1. the language model on text, then frozen;
2. the vision encoder pretrained alone with a shape/colour classifier head on the global view, then
frozen, and the projector + `vision` LoRA trained through the language model; 3. the speech
encoder pretrained alone with word-level CTC, then frozen, and the projector + `speech` LoRA
trained through the language model. (The paper's encoders come pretrained too: SigLIP, and a
conformer trained on ASR.) The model is `Phi4MultimodalForCausalLM` with shrunk sizes (GQA,
partial rotary, LongRoPE and tied embeddings kept); LoRAs are peft's. Seeds are fixed, so a run on
the same library versions and CPU regenerates the same weights. Measured time and quality are in
models/embedded/README.md.

Four things make the small model hear and keep the skills in the adapters:
- The language model must copy. Its CTC head alone transcribes the held-out clips at ~6% WER, yet
  through a base model that copied 45% of held-out "Repeat after me" items the speech WER stayed at
  ~60% (words right, order and count wrong). So most of the text mix is copying ("Repeat after
  me", and reading words among fillers, shaped like the encoder's frames), at lr 1e-3.
- The speech projector starts where the base model's reading skill fits: each frame mapped to the
  embedding of what the CTC head hears there (`projector_start_loss`).
- The speech LoRA stage sees clips as they come, without long padded silences (`draw_similar`).
  Together with 1500 CTC steps instead of 1000 this took the held-out WER from 13.1% to 4.1%;
  neither did it alone (1500 CTC steps on padded batches: 12.9%; like lengths in every speech
  stage, CTC included, at 1000 steps: 12.7%).
- A base model that reads lets the projector learn embeddings it reads without any adapter (85%
  of speech words with no adapter). So the base model refuses media questions whatever text
  precedes them, the LoRA stages keep the base model refusing the projected media (a term that
  trains only the projector), and each LoRA keeps refusing the other modality's question.

Ruled out on the way (2 cores, minutes per try): training the encoders from scratch through the
LM (shape stayed at 42-50%, speech at the answer prior); scoring the pretraining heads against the
frozen LM's word embeddings, so the projector starts aligned (both encoders then learnt more
slowly); a 3x learning rate for the speech LoRA; SpecAugment in the CTC stage (11.9% WER against
6.5% at 1000 steps); longer speech LoRA training on a base model that cannot copy (2400 steps: 50%
WER); with padded random batches, more text steps (4000), CTC steps (1500) and clips (6000)
(12.9% WER against 13.1%); a 6-layer language model (read 89% of held-out "Read the words."
items exact against 85% with 4 layers, for 1.5x the text stage's time); batches of like lengths in
the CTC stage too (see `draw_similar`).
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path

import click
import numpy as np
import soundfile
import torch
from tqdm import tqdm

from phi4edge.models.lora import save_peft_adapter
from phi4edge.models.phi4mm import original_key
from phi4edge.runtime.audio import log_mel, num_audio_tokens, to_16k
from phi4edge.runtime.image import ImageSettings, preprocess
from phi4edge.runtime.tokenizer import ChatTokenizer

from . import tasks
from .bpe import save_tokenizer, train_tokenizer

SEED = 20261124
IMAGES = ImageSettings(crop_size=112, patch_size=14, dynamic_hd=16)
IMAGE_ID, AUDIO_ID = 7, 8          # <|endoftext10|>, <|endoftext11|> in our tokenizer
LM_TARGETS = r"model.layers.\d+.((self_attn.(qkv|o)_proj)|(mlp.(gate_up|down)_proj))"
LORA = {"vision": dict(r=32, lora_alpha=64), "speech": dict(r=40, lora_alpha=80)}   # alpha/r = 2, as the real model
EVAL_SIZES = {"image": 300, "speech": 200, "text": 200}
PROJECTOR_START_STEPS = 300   # speech projector onto CTC posteriors, before the LoRA stage


def model_config(vocab: int):
    """Phi-4-mini's shape at a small scale: 4 layers, hidden 256, 4 query / 2 KV heads of 64,
    partial rotary 0.75 with LongRoPE; SigLIP-style vision at 112-pixel crops; a 4-block conformer."""
    from transformers import Phi4MultimodalConfig
    gen = torch.Generator().manual_seed(SEED)
    half = int(64 * 0.75) // 2
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
            "original_max_position_embeddings": 4096,
            "short_factor": (1 + 0.1 * torch.rand(half, generator=gen)).tolist(),
            "long_factor": (1 + 4 * torch.rand(half, generator=gen)).tolist()}
    return Phi4MultimodalConfig(
        vocab_size=vocab, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16384, original_max_position_embeddings=4096,
        rope_parameters=rope, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        vision_config=dict(hidden_size=144, intermediate_size=288, num_hidden_layers=3, num_attention_heads=2,
                           image_size=112, crop_size=112, patch_size=14, image_token_id=IMAGE_ID),
        audio_config=dict(hidden_size=128, intermediate_size=256, num_blocks=4, num_attention_heads=4,
                          ext_pw_out_channel=128, depthwise_separable_out_channel=128, nemo_conv_channels=64,
                          audio_token_id=AUDIO_ID, bias_max_distance=50))


def init_encoder(module: torch.nn.Module, reset_convs: bool = False) -> None:
    """N(0, 0.02) linears and embeddings, zero biases, as ViT/conformer training starts. The
    default random init of transformers' Phi-4-multimodal towers gives the vision attention scores
    of +-750 and hidden states of std ~40: trained from there, the encoder learnt colour (a mean
    over patches) but stayed at chance on shape (1000 steps). `reset_convs` gives convolutions
    PyTorch's fan-in default: the conformer's get N(0, 0.02) from transformers, which shrinks the
    NeMo subsampling's output to ~1e-6, below LayerNorm's epsilon, so nothing reached the blocks
    and CTC never left the all-blank phase. (SigLIP's patch embedding keeps transformers'
    lecun-normal init: PyTorch's default there halved the shape accuracy after 400 steps.)"""
    for m in module.modules():
        if reset_convs and isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)):
            m.reset_parameters()
        if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, torch.nn.Linear) and m.bias is not None:
            torch.nn.init.zeros_(m.bias)


def pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(map(len, rows))
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def batch(tok: ChatTokenizer, items: list[tuple[str, str]], media: list[dict] | None = None) -> dict:
    """input_ids / attention_mask / labels for (prompt, answer) chats; loss on the answer only."""
    ids, labels = [], []
    for i, (prompt, answer) in enumerate(items):
        p = tok.encode_prompt(prompt, media=media[i] if media else None)
        a = tok.tokenizer.encode(answer + "<|end|>", add_special_tokens=False).ids
        ids.append(p + a)
        labels.append([-100] * len(p) + a)
    input_ids = pad(ids, 0)
    return {"input_ids": input_ids, "attention_mask": pad([[1] * len(r) for r in ids], 0), "labels": pad(labels, -100)}


def train(params, steps: int, lr: float, step_loss, desc: str) -> float:
    """AdamW with warm-up and cosine decay on `step_loss()`; returns the last 20 steps' mean loss."""
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 30) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    losses = []
    with tqdm(range(steps), desc=desc, unit="step") as bar:
        for _ in bar:
            loss = step_loss()
            loss.backward()
            # No global-norm clipping: a few encoder biases get gradients of ~1e4, and clipping to a
            # global norm scaled every other gradient below Adam's epsilon. Adam bounds each step by
            # the learning rate anyway.
            opt.step(), sched.step(), opt.zero_grad()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return float(np.mean(losses[-20:]))


def classifier_loss(image_embed, head: torch.nn.Linear, rng: random.Random, size: int) -> torch.Tensor:
    """Vision pretraining (SigLIP was pretrained before Phi-4-multimodal): shape and colour
    classified from the mean of the global view's features, at the layer the LM is given."""
    items = [tasks.image_item(rng) for _ in range(size)]
    views = torch.from_numpy(np.stack([preprocess(i.image, IMAGES).pixel_values[0] for i in items]))
    logits = head(image_embed.get_img_features(views).mean(1))
    loss = 0
    for kind, options, cols in (("shape", tasks.SHAPES, slice(0, len(tasks.SHAPES))),
                                ("color", list(tasks.COLORS), slice(len(tasks.SHAPES), None))):
        target = torch.tensor([options.index(getattr(i, kind)) for i in items])
        loss = loss + torch.nn.functional.cross_entropy(logits[:, cols], target)
    return loss


def draw(pool: list, rng: random.Random, size: int) -> list:
    return [pool[rng.randrange(len(pool))] for _ in range(size)]


def draw_similar(pool: list, rng: random.Random, size: int) -> list:
    """`size` clips of about the same length from a pool sorted by length, so that padding to the
    longest adds almost no trailing silence, which held-out clips do not have. Trained on padded
    random batches, the projector and LoRA often added a word after the last one (13.1% WER on the
    held-out clips as they are, 7.2% with 0.5 s of silence appended). The CTC stage keeps random
    batches: with batches of like lengths it ended at a loss of 0.24 against 0.11, and substituted
    words doubled (12.7% WER)."""
    start = rng.randrange(max(1, len(pool) - 4 * size))
    return rng.sample(pool[start:start + 4 * size], size)


def ctc_loss(encoder, head: torch.nn.Linear, pool: list[tuple[np.ndarray, str]], rng: random.Random,
             size: int) -> torch.Tensor:
    """Speech pretraining (the real encoder was pretrained on ASR): word-level CTC on the
    conformer's output frames (80 ms each)."""
    picked = draw(pool, rng, size)
    logp = head(encoder(speech_features(picked, rng), None)).log_softmax(-1).transpose(0, 1)
    targets = [[tasks.WORDS.index(w) for w in text.split()] for _, text in picked]
    return torch.nn.functional.ctc_loss(
        logp, torch.tensor(sum(targets, [])), torch.full((size,), logp.shape[0]),
        torch.tensor([len(t) for t in targets]), blank=len(tasks.WORDS), zero_infinity=True)


def projector_start_loss(audio, head: torch.nn.Linear, targets: torch.Tensor,
                         pool: list[tuple[np.ndarray, str]], rng: random.Random, size: int) -> torch.Tensor:
    """The speech projector's start: each 80 ms frame mapped to the language model's embedding of
    what the CTC head hears there (posterior-weighted word embeddings, the filler for the blank), so
    the LoRA stage starts from audio the base model's reading skill fits. With a random projector
    start, 600 LoRA steps reached 33% WER on fresh clips; from this start, 15%."""
    picked = draw_similar(pool, rng, size)
    with torch.no_grad():
        hidden = audio.encoder(speech_features(picked, rng), None)
        target = head(hidden).softmax(-1) @ targets
    out = audio.down_proj_for_speech(torch.nn.functional.gelu(audio.up_proj_for_speech(hidden)))
    return ((out - target) ** 2).mean() / targets.pow(2).mean()


def image_batch(tok: ChatTokenizer, rng: random.Random, size: int,
                items: list[tasks.ImageItem] | None = None, answer: str | None = None) -> dict:
    """`size` rendered images of one random size (same crop grid, so no crop padding), each
    answered with its own answer or with `answer`."""
    dims = tasks.image_size(rng)
    items = items or [tasks.image_item(rng, dims) for _ in range(size)]
    prepared = [preprocess(i.image, IMAGES) for i in items]
    out = batch(tok, [(i.question, answer or i.answer) for i in items],
                [{"image": (IMAGE_ID, [p.num_tokens])} for p in prepared])
    rows, cols = prepared[0].grid
    out |= {"image_pixel_values": torch.from_numpy(np.stack([p.pixel_values for p in prepared])),
            "image_attention_mask": torch.from_numpy(np.ascontiguousarray(np.stack([p.patch_mask for p in prepared]))).long(),
            "image_sizes": torch.tensor([[rows * IMAGES.crop_size, cols * IMAGES.crop_size]] * size)}
    return out


def speech_features(picked: list[tuple[np.ndarray, str]], rng: random.Random) -> torch.Tensor:
    """Log-mel features of 16 kHz clips, padded at the end with low noise to the longest (so no
    attention mask is needed)."""
    length = max(len(w) for w, _ in picked)
    noise = np.random.default_rng(rng.randrange(1 << 30))
    waves = [np.concatenate([w, noise.normal(0, 1e-3, length - len(w)).astype(np.float32)]) for w, _ in picked]
    return torch.from_numpy(np.stack([log_mel(w) for w in waves]))


def speech_batch(tok: ChatTokenizer, pool: list[tuple[np.ndarray, str]], rng: random.Random, size: int,
                 answer: str | None = None) -> dict:
    """`size` transcription chats on clips drawn from `pool`, answered with their transcripts or
    with `answer`."""
    picked = draw_similar(pool, rng, size)
    feats = speech_features(picked, rng)
    n = num_audio_tokens(feats.shape[1])
    out = batch(tok, [(tasks.SPEECH_PROMPT, answer or t) for _, t in picked], [{"audio": (AUDIO_ID, [n])}] * size)
    return out | {"audio_input_features": feats, "audio_embed_sizes": torch.tensor([n] * size)}


def without_adapters(pm, inputs: dict) -> torch.Tensor:
    """The frozen base model's loss: gradients reach only the encoders' projectors."""
    with pm.disable_adapter():
        return pm(**inputs).loss


def greedy_accuracy(model, tok: ChatTokenizer, examples: list[tuple[dict, str]]) -> float:
    """Share of examples whose greedy answer equals the expected text. A plain loop of full
    forwards (answers are a few tokens), since generate() mangles the image attention mask."""
    right = 0
    with torch.no_grad():
        for inputs, answer in examples:
            ids = inputs["input_ids"]
            for _ in range(12):
                token = model(**(inputs | {"input_ids": ids})).logits[0, -1].argmax()
                if int(token) in (0, 4):
                    break
                ids = torch.cat([ids, token.view(1, 1)], dim=1)
            text = tok.tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:].tolist(), skip_special_tokens=True)
            right += text.strip() == answer
    return right / len(examples)


def report(pm, tok: ChatTokenizer, name: str, examples: list[tuple[dict, str]], active: str) -> None:
    """Greedy exact match (torch, fresh items) with the routed adapter, none, and the other one;
    a quick check as training goes: `phi4edge eval` on exported bundles gives the figures we report."""
    other = {"vision": "speech", "speech": "vision"}[active]
    pm.eval()
    pm.set_adapter(active)
    scores = {"routed": greedy_accuracy(pm, tok, examples)}
    with pm.disable_adapter():
        scores["none"] = greedy_accuracy(pm, tok, examples)
    pm.set_adapter(other)
    scores["swapped"] = greedy_accuracy(pm, tok, examples)
    pm.set_adapter(active)
    pm.train()
    click.echo(f"{name} exact match (torch, {len(examples)} fresh items): "
               + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))


def prompt_only(b: dict, i: int) -> dict:
    """Row i of a batch, cut to its prompt (for generate)."""
    start = int((b["labels"][i] != -100).nonzero()[0])
    out = {"input_ids": b["input_ids"][i:i + 1, :start]}
    for k in ("image_pixel_values", "image_attention_mask", "image_sizes", "audio_input_features", "audio_embed_sizes"):
        if k in b:
            out[k] = b[k][i:i + 1]
    return out


def write_checkpoint(pm, cfg, out: Path) -> None:
    """The original Phi-4-multimodal layout: LoRAs inside the shards around `base_layer`, renamed
    encoder keys, remote-code config fields, plus vision-lora/ and speech-lora/ PEFT folders."""
    from safetensors.torch import save_file
    state = {original_key(k): v.detach().to(torch.bfloat16).contiguous()
             for k, v in pm.base_model.model.state_dict().items() if k != "lm_head.weight"}
    keys = sorted(state)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    index = {}
    for i, part in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: state[k] for k in part}, str(out / name), metadata={"format": "pt"})
        index |= {k: name for k in part}
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(v.numel() * 2 for v in state.values())}, "weight_map": index}, indent=1))
    text = cfg.to_dict()
    vision, audio = cfg.vision_config, cfg.audio_config
    rope = text["rope_parameters"]
    config = {
        "architectures": ["Phi4MMForCausalLM"], "model_type": "phi4mm", "torch_dtype": "bfloat16",
        **{k: text[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                                "original_max_position_embeddings", "rms_norm_eps", "tie_word_embeddings")},
        # our tokenizer's <|endoftext|> (Phi4MultimodalConfig's own defaults are the real model's ids)
        "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
        "hidden_act": "silu", "partial_rotary_factor": rope["partial_rotary_factor"], "rope_theta": rope["rope_theta"],
        "rope_scaling": {"type": "longrope", "short_factor": rope["short_factor"], "long_factor": rope["long_factor"]},
        "sliding_window": None, "attention_bias": False, "lm_head_bias": False, "mlp_bias": False,
        "embd_layer": {
            "embedding_cls": "image_audio",
            "image_embd_layer": {"crop_size": vision.crop_size, "embedding_cls": "tune_image",
                                 "hd_transform_order": "sub_glb", "image_token_compression_cls": "avg_pool_2d",
                                 "projection_cls": "mlp", "use_hd_transform": True, "with_learnable_separator": True},
            "audio_embd_layer": {"compression_rate": 8, "downsample_rate": 1, "embedding_cls": "audio",
                                 "projection_cls": "mlp", "use_conv_downsample": False, "use_qformer": False}},
        "audio_processor": {"name": "cascades", "config": {
            "attention_dim": audio.hidden_size, "attention_heads": audio.num_attention_heads,
            "linear_units": audio.intermediate_size, "num_blocks": audio.num_blocks, "input_size": 80,
            "kernel_size": audio.kernel_size, "ext_pw_out_channel": audio.ext_pw_out_channel,
            "depthwise_seperable_out_channel": audio.depthwise_separable_out_channel,   # sic, as published
            "nemo_conv_settings": {"conv_channels": audio.nemo_conv_channels}, "time_reduction": 8,
            "chunk_size": -1, "left_chunk": 18, "input_layer": "nemo_conv", "causal": True,
            "relative_attention_bias_args": {"type": "t5", "t5_bias_max_distance": audio.bias_max_distance}}},
        **{f"{name}_lora": {"r": spec["r"], "lora_alpha": spec["lora_alpha"], "dp": 0.0,
                            "layer": r"((layers.*self_attn\.(qkv|o)_proj)|(layers.*mlp\.(gate_up|down)_proj))"}
           for name, spec in LORA.items()},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [4, 0], "pad_token_id": 0}))
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Phi4MMImageProcessor", "dynamic_hd": IMAGES.dynamic_hd,
        "feature_extractor_type": "Phi4MMAudioFeatureExtractor", "audio_compression_rate": 8,
        "audio_downsample_rate": 1, "audio_feat_stride": 1, "processor_class": "Phi4MMProcessor"}, indent=2))
    for name in LORA:
        save_peft_adapter(pm, name, out / f"{name}-lora")


def write_eval_sets(out: Path, exe: str) -> None:
    """Held-out items (their own seeds, never seen in training): JPEG images, Ogg Vorbis audio at
    the rate it was synthesised, text chats; each set a JSON-lines file of file + question + answer."""
    for sub in ("images", "audio"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED + 1)
    with open(out / "image.jsonl", "w") as f:
        for i in range(EVAL_SIZES["image"]):
            item = tasks.image_item(rng)
            item.image.save(out / "images" / f"{i:03d}.jpg", quality=90)
            f.write(json.dumps({"file": f"images/{i:03d}.jpg", "prompt": item.question, "answer": item.answer}) + "\n")
    rng = random.Random(SEED + 2)
    with open(out / "speech.jsonl", "w") as f:
        for i in range(EVAL_SIZES["speech"]):
            item = tasks.speech_item(rng, exe)
            soundfile.write(out / "audio" / f"{i:03d}.ogg", item.wave, item.rate, format="OGG", subtype="VORBIS")
            f.write(json.dumps({"file": f"audio/{i:03d}.ogg", "prompt": tasks.SPEECH_PROMPT, "answer": item.text}) + "\n")
    rng = random.Random(SEED + 3)
    with open(out / "text.jsonl", "w") as f:
        for _ in range(EVAL_SIZES["text"]):
            prompt, answer = tasks.text_item(rng)
            f.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")


def write_samples(out: Path, exe: str) -> None:
    """The demo's image and audio clip (fixed content, so `make demo` answers are checkable)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED + 4)
    while (item := tasks.image_item(rng, (300, 200))).question != tasks.IMAGE_QUESTIONS["shape"]:
        pass
    item.image.save(out / "shape.jpg", quality=90)
    clip = tasks.speech_item(random.Random(SEED + 5), exe)
    soundfile.write(out / "speech.ogg", clip.wave, clip.rate, format="OGG", subtype="VORBIS")
    (out / "samples.json").write_text(json.dumps({
        "image": {"file": "shape.jpg", "prompt": item.question, "answer": item.answer},
        "audio": {"file": "speech.ogg", "prompt": tasks.SPEECH_PROMPT, "answer": clip.text}}, indent=2))


@click.command()
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("models/embedded"), show_default=True)
@click.option("--text-steps", default=3000, show_default=True)
@click.option("--vision-pretrain-steps", default=1500, show_default=True, help="shape/colour classifier")
@click.option("--vision-steps", default=600, show_default=True, help="projector + vision LoRA")
@click.option("--speech-pretrain-steps", default=1500, show_default=True, help="word CTC")
@click.option("--speech-steps", default=1500, show_default=True, help="projector + speech LoRA")
@click.option("--speech-pool", default=3000, show_default=True, type=click.IntRange(min=64),
              help="synthesised training clips (64 at least: `draw_similar` picks from windows of 4 batches)")
def main(out: Path, text_steps: int, vision_pretrain_steps: int, vision_steps: int, speech_pretrain_steps: int,
         speech_steps: int, speech_pool: int) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import Phi4MultimodalForCausalLM
    torch.manual_seed(SEED), np.random.seed(SEED)
    start = time.perf_counter()
    times = {}
    exe = tasks.espeak()
    work = out.parent / f".{out.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    ckpt = work / "checkpoint"
    ckpt.mkdir(parents=True)

    tokenizer = train_tokenizer(640, tasks.tokenizer_corpus())
    save_tokenizer(tokenizer, ckpt, 16384)
    tok = ChatTokenizer.from_dir(ckpt)
    vocab = 64 * math.ceil(tok.vocab_size / 64) + 64
    cfg = model_config(vocab)
    model = Phi4MultimodalForCausalLM._from_config(cfg, attn_implementation="eager")
    model.train()

    # 1. the language model on text; afterwards it is frozen (peft freezes every non-LoRA weight)
    rng = random.Random(SEED)
    t = time.perf_counter()
    lm_params = [p for n, p in model.named_parameters() if "embed_tokens_extend" not in n]
    # lr 1e-3: at 2e-3 the same mix copied 48% of held-out repeats, at 1e-3 all of them
    train(lm_params, text_steps, 1e-3, lambda: model(**batch(tok, [tasks.text_item(rng) for _ in range(32)])).loss,
          "1/5 text")
    times["text"] = time.perf_counter() - t

    pm = get_peft_model(model, LoraConfig(target_modules=LM_TARGETS, lora_dropout=0.0, **LORA["vision"]),
                        adapter_name="vision")
    pm.add_adapter("speech", LoraConfig(target_modules=LM_TARGETS, lora_dropout=0.0, **LORA["speech"]))
    vision = pm.base_model.model.model.embed_tokens_extend.image_embed
    audio = pm.base_model.model.model.embed_tokens_extend.audio_embed

    # 2. the vision encoder pretrained alone, then frozen; projector + vision LoRA through the LM
    init_encoder(vision)
    rng = random.Random(SEED + 10)
    t = time.perf_counter()
    head = torch.nn.Linear(cfg.vision_config.hidden_size, len(tasks.SHAPES) + len(tasks.COLORS))
    for p in vision.img_processor.parameters():
        p.requires_grad = True
    train([*vision.img_processor.parameters(), *head.parameters()], vision_pretrain_steps, 1e-3,
          lambda: classifier_loss(vision, head, rng, 32), "2/5 vision encoder")
    for p in vision.img_processor.parameters():
        p.requires_grad = False
    times["vision encoder"] = time.perf_counter() - t
    t = time.perf_counter()
    pm.set_adapter("vision")
    projector = [p for n, p in vision.named_parameters() if not n.startswith("img_processor.")]
    for p in projector:
        p.requires_grad = True     # the projection MLP and the learnt separators

    def vision_loss() -> torch.Tensor:
        # The skill must live in the adapter: the base model keeps refusing the projected image
        # (only the projector learns from that term), and the vision LoRA keeps refusing speech
        # requests (text stands in for audio, whose projector is not trained yet). Without these
        # the projector learnt embeddings the base model could read by itself.
        refusals = [tasks.refusal_item(rng, "audio") for _ in range(8)]
        return (pm(**image_batch(tok, rng, 12)).loss
                + without_adapters(pm, image_batch(tok, rng, 4, answer=tasks.NO_IMAGE))
                + pm(**batch(tok, refusals)).loss)

    train(pm.parameters(), vision_steps, 1e-3, vision_loss, "3/5 vision + LM")
    for p in projector:
        p.requires_grad = False
    times["vision + LM"] = time.perf_counter() - t
    check = random.Random(SEED + 99)
    images = [(prompt_only(image_batch(tok, check, 1, [i]), 0), i.answer)
              for i in (tasks.image_item(check) for _ in range(60))]
    report(pm, tok, "vision", images, "vision")

    # 3. the speech encoder pretrained with CTC, then frozen; projector + speech LoRA through the LM
    t = time.perf_counter()
    rng = random.Random(SEED + 20)
    pool = [(to_16k(item.wave, item.rate), item.text) for item in
            (tasks.speech_item(rng, exe) for _ in tqdm(range(speech_pool), desc="synthesise speech", unit="clip"))]
    times["speech data"] = time.perf_counter() - t
    init_encoder(audio, reset_convs=True)
    # global mean / inverse std of the log-mel features (the real encoder's normalisation buffers)
    sample = np.concatenate([log_mel(w) for w, _ in pool[:500]])
    norm = audio.encoder.encoder_embedding
    norm.global_mean.copy_(torch.from_numpy(sample.mean(0)))
    norm.global_invstd.copy_(torch.from_numpy(1 / sample.std(0)))
    t = time.perf_counter()
    head = torch.nn.Linear(cfg.audio_config.hidden_size, len(tasks.WORDS) + 1)   # + the CTC blank
    for p in audio.encoder.parameters():
        p.requires_grad = True
    train([*audio.encoder.parameters(), *head.parameters()], speech_pretrain_steps, 1e-3,
          lambda: ctc_loss(audio.encoder, head, pool, rng, 16), "4/5 speech encoder")
    for p in audio.encoder.parameters():
        p.requires_grad = False
    times["speech encoder"] = time.perf_counter() - t
    pool.sort(key=lambda clip: len(clip[0]))   # for `draw_similar`
    t = time.perf_counter()
    pm.set_adapter("speech")
    projector = [*audio.up_proj_for_speech.parameters(), *audio.down_proj_for_speech.parameters()]
    for p in projector:
        p.requires_grad = True
    ids = [tok.tokenizer.encode(f" {w}", add_special_tokens=False).ids for w in tasks.WORDS + [tasks.FILLER]]
    assert all(len(i) == 1 for i in ids), "each task word is one token after a space"
    targets = pm.base_model.model.model.embed_tokens.weight[[i[0] for i in ids]].detach()
    train(projector, PROJECTOR_START_STEPS, 1e-3, lambda: projector_start_loss(audio, head, targets, pool, rng, 16),
          "5/5 speech projector start")

    def speech_loss() -> torch.Tensor:
        # as for vision: the base model keeps refusing projected audio (a projector-only term),
        # and the speech LoRA keeps refusing image questions about real images
        return (pm(**speech_batch(tok, pool, rng, 12)).loss
                + without_adapters(pm, speech_batch(tok, pool, rng, 4, answer=tasks.NO_AUDIO))
                + pm(**image_batch(tok, rng, 4, answer=tasks.NO_IMAGE)).loss)

    train(pm.parameters(), speech_steps, 1e-3, speech_loss, "5/5 speech + LM")
    times["speech + LM"] = time.perf_counter() - t
    clips = [tasks.speech_item(check, exe) for _ in range(60)]
    report(pm, tok, "speech", [(prompt_only(speech_batch(tok, [(to_16k(c.wave, c.rate), c.text)], check, 1), 0), c.text)
                               for c in clips], "speech")
    report(pm, tok, "vision, again", images, "vision")
    pm.eval()

    write_checkpoint(pm, cfg, ckpt)   # beside the tokenizer files saved at the start
    write_eval_sets(work / "eval", exe)
    write_samples(work / "samples", exe)
    times["total"] = time.perf_counter() - start
    (work / "training.json").write_text(json.dumps({
        "seed": SEED, "steps": {"text": text_steps, "vision encoder": vision_pretrain_steps, "vision + LM": vision_steps,
                                "speech encoder": speech_pretrain_steps,
                                "speech projector start": PROJECTOR_START_STEPS, "speech + LM": speech_steps},
        "speech_pool": speech_pool, "seconds": {k: round(v, 1) for k, v in times.items()},
        "threads": torch.get_num_threads(), "torch": torch.__version__}, indent=2))
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    click.echo(f"wrote {out} in {times['total'] / 60:.1f} min: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))


if __name__ == "__main__":
    main()
