"""The organism's training data: the image pool, CLIP's pixel normalisation, and tokenised question batches."""

from __future__ import annotations

import numpy as np
import torch

from logitleak.data.shapes import ATTRIBUTES, QUESTIONS, render_shapes, sample_attributes
from logitleak.models import organism as org


class Pool:
    """Training images (uint8, channels first) and their attribute indices, drawn from one seed."""

    def __init__(self, n: int, seed: int, image_size: int, noise: float):
        ss = np.random.SeedSequence([int(seed), 0x5A17E5])
        a_seed, r_seed = (int(s.generate_state(1)[0]) for s in ss.spawn(2))
        attrs = sample_attributes(n, seed=a_seed)
        pixels, _ = render_shapes(attrs, image_size=image_size, seed=r_seed, noise=noise)
        self.pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.stack(
            [torch.tensor(attrs[a].map({v: i for i, v in enumerate(vals)}).to_numpy(dtype=np.int64))
             for a, vals in ATTRIBUTES.items()], dim=1)

    def __len__(self) -> int:
        return self.pixels.shape[0]


class Normalizer:
    """The CLIP image processor's arithmetic (rescale 1/255, then mean/std), batched."""

    def __init__(self, image_processor):
        self.mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(image_processor.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.scale = float(image_processor.rescale_factor)

    def __call__(self, pixels_u8: torch.Tensor) -> torch.Tensor:
        x = pixels_u8.to(torch.float32) * self.scale
        return (x - self.mean) / self.std


class Prompts:
    """Token ids of every (attribute, paraphrase) prompt through the chat template + processor."""

    def __init__(self, processor, image_size: int):
        from PIL import Image

        blank = Image.new("RGB", (image_size, image_size))
        tok = processor.tokenizer
        self.pad_id = tok.pad_token_id
        self.eos_id = tok.eos_token_id
        self.attrs = list(ATTRIBUTES)
        self.ids: list[list[list[int]]] = []
        for a in self.attrs:
            per = []
            for q in QUESTIONS[a]:
                enc = processor(images=[blank], text=[org.render_prompt(processor, q)])
                per.append(list(enc["input_ids"][0]))
            self.ids.append(per)
        self.answer_ids = [tok.convert_tokens_to_ids(list(vals)) for vals in ATTRIBUTES.values()]

    def batch(self, attr_idx: np.ndarray, para_idx: np.ndarray, labels: torch.Tensor):
        """Left-padded ``prompt + answer`` ids, mask, and the answer ids (labels: (B, n_attrs))."""
        seqs, answers = [], []
        for i, (a, p) in enumerate(zip(attr_idx, para_idx)):
            prompt = self.ids[a][p % len(self.ids[a])]
            ans = self.answer_ids[a][int(labels[i, a])]
            seqs.append(prompt + [ans])
            answers.append(ans)
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        return ids, mask, torch.tensor(answers)
