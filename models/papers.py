"""The bibliography: every paper a config field cites (`cite={KEY: "where: what"}` on the field), declared once.

`label` is how a citation names the paper (the audit prints `LABEL WHERE`, `python -m harness.audit`);
`reference` is the full reference.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paper:
    label: str
    reference: str


PAPERS: dict[str, Paper] = {
    "PixelDiT": Paper("PixelDiT (arXiv 2511.20645)",
                      'Yu et al., "PixelDiT: Pixel Diffusion Transformers", arXiv 2511.20645 (sections 3.1-3.4, '
                      'Figure 2, Table 4 ablations, Table 6 sizes), and its official code'),
    "JiT": Paper("JiT (Li & He, 'Back to Basics')",
                 'Li & He, "Back to Basics: Let Denoising Generative Models Denoise", and its official code'),
    "DiT": Paper("DiT (Peebles & Xie)",
                 'Peebles & Xie, "Scalable Diffusion Models with Transformers" (section 3.2, Table 1), and its '
                 'official code'),
    "REPA": Paper("REPA (Yu et al.)",
                  'Yu et al., "Representation Alignment for Generation: Training Diffusion Transformers Is Easier '
                  'Than You Think" (section 3.2), and its official code'),
    "DiffiT": Paper("DiffiT (arXiv 2312.02139)",
                    'Hatamizadeh et al., "DiffiT: Diffusion Vision Transformers for Image Generation", arXiv '
                    '2312.02139 (section 3.2, ablations 5.x, appendix H-I), and its official latent-model code'),
    "SiT": Paper("SiT (Ma et al.)",
                 'Ma et al., "SiT: Exploring Flow and Diffusion-based Generative Models with Scalable Interpolant '
                 'Transformers"'),
    "EDM": Paper("EDM (Karras et al.)",
                 'Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models"'),
    "SD3": Paper("SD3 (Esser et al.)",
                 'Esser et al., "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis"'),
    "ADM": Paper("ADM (Dhariwal & Nichol)", 'Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis"'),
    "Swin": Paper("Swin (Liu et al.)",
                  'Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows"'),
    "PixelGen": Paper("PixelGen (arXiv 2602.02493)",
                      'Ma, Xu & Zhang, "PixelGen: Pixel Diffusion Beats Latent Diffusion with Perceptual Loss", '
                      'arXiv 2602.02493, and its official code (Zehong-Ma/PixelGen)'),
    "DeCo": Paper("DeCo (arXiv 2511.19365)",
                  'Ma et al., "DeCo: Frequency-Decoupled Pixel Diffusion for End-to-End Image Generation", arXiv '
                  '2511.19365, and its official code (Zehong-Ma/DeCo)'),
    "PRX": Paper("PRX (Photoroom)",
                 "Photoroom's PRX training code and its optimizer configurations (Photoroom/PRX, "
                 "configs/yamls/optimizer/)"),
    "seeds": Paper("the seeds' audits",
                   "the code-vs-paper audits of the jitmask codebase this project started from (JiT-B/16 with "
                   "pixel blocks), cited by audit and item: \"seeds 000 #1\""),
}


def cite(paper: str, where: str, short: bool = False) -> str:
    """One citation as text: the paper's label (`short`: its key in brackets) and where it says it. A `where`
    that starts with ':' is about the paper as a whole (no section): "PixelDiT (arXiv 2511.20645): no GT pixel
    hints"."""
    label = f"[{paper}]" if short else PAPERS[paper].label
    return f"{label}{where}" if where.startswith(":") else f"{label} {where}"
