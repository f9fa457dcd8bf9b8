"""Inspect presets: parameters (total and per component), GMACs and GFLOPs, on the meta device.

    python -m models.inspect pixeldit_xl                        # one model, per-component breakdown
    python -m models.inspect pixeldit_xl adaln=B compaction=1   # with overrides
    python -m models.inspect pixeldit_xl --resolution 1024 --json
    python -m models.inspect pixeldit_b pixeldit_l pixeldit_xl  # several: a comparison table
    python -m models.inspect --all                              # every preset against its paper and official code
    python -m models.inspect --switch-table                        # the table of every model switch (Markdown)
    python -m models.inspect --switch-table --write docs/models.md # ... written into the file between its markers
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from toolkit.cli import ArgumentParser, run

from .presets import PUBLISHED, model_config, preset_names


def inspect_preset(preset: str, overrides: list[str], resolution: int | None) -> dict:
    from .complexity import measure, with_resolution  # torch: only once the arguments are read
    cfg = model_config(preset, overrides)
    if resolution:
        cfg = with_resolution(cfg, resolution)
        cfg.validate()
    c = measure(cfg)
    return dict(preset=preset, overrides=overrides, resolution=cfg.image_size, params=c.params,
                repa_projector_params=c.repa_params, gmacs=c.gmacs, gflops=c.gflops,
                train_gflops=c.train_flops / 1e9, components=c.components)


def comparison_table(rows: list[dict]):
    """One row per preset (a pandas frame); the paper's figures beside ours where the paper gives them."""
    import pandas as pd
    table = []
    for row in rows:
        paper = PUBLISHED.get(row["preset"], {}) if row["resolution"] == default_resolution(row["preset"]) else {}
        table.append({
            "preset": row["preset"], "res": row["resolution"],
            "params (M)": row["params"] / 1e6,
            "paper params (M)": f"{paper['params'] / 1e6:g}" if "params" in paper else "",
            "official code params": official_column(row["params"], paper.get("official")),
            "GMACs": row["gmacs"], "GFLOPs": row["gflops"],
            "paper": (f"{paper['gflops']:g} GFLOPs" if "gflops" in paper
                      else f"{paper['gmacs']:g} GMACs" if "gmacs" in paper else ""),
            "REPA proj (M)": row["repa_projector_params"] / 1e6,
        })
    return pd.DataFrame(table).set_index("preset")


def official_column(ours: int, official: int | None) -> str:
    """The official code's exact count, and whether ours equals it."""
    if official is None:
        return ""
    return f"{official:,} " + ("(equal)" if ours == official else f"(ours {ours - official:+,})")


def default_resolution(preset: str) -> int:
    return model_config(preset).image_size


# ---- the switch table of docs/models.md ----------------------------------------------------------------

TABLE_FILE = "docs/models.md"                      # where the table lives, relative to the project root
TABLE_COMMAND = f"python -m models.inspect --switch-table --write {TABLE_FILE}"
TABLE_BEGIN = f"<!-- switch table, generated (do not edit): {TABLE_COMMAND} -->"
TABLE_END = "<!-- end switch table -->"


def switch_table() -> str:
    """Every `ModelConfig` switch as Markdown, one table per section of the class: its values (the default
    first), its doc, the papers that set it (`cite=`) and when it has no effect (`family=`, `inert_when=`)."""
    from toolkit.docs import switch_table as table

    from .config import ModelConfig
    return table(ModelConfig)


def table_span(text: str, source: str = TABLE_FILE) -> tuple[int, int]:
    """The character span of the switch table between its markers in `text` (the text of `source`)."""
    from toolkit.docs import marked_span
    return marked_span(text, TABLE_BEGIN, TABLE_END, source)


def write_table(path: Path) -> None:
    from toolkit.docs import write_marked_span
    write_marked_span(path, TABLE_BEGIN, TABLE_END, switch_table())


def main(argv: list[str] | None = None) -> int:
    return run(lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m models.inspect", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="*", metavar="PRESET|key=value",
                        help=f"presets ({', '.join(preset_names())}) and overrides applied to each")
    parser.add_argument("--resolution", type=int, help="image resolution in pixels (default: the preset's)")
    parser.add_argument("--json", action="store_true", help="print JSON (one object, or a list for several)")
    parser.add_argument("--all", action="store_true", help="every preset")
    parser.add_argument("--switch-table", action="store_true",
                        help="print the table of every model switch (Markdown), generated from models/config.py")
    parser.add_argument("--write", type=Path, metavar="FILE",
                        help=f"with --switch-table: write it into FILE between its switch-table markers "
                        f"({TABLE_FILE})")
    args = parser.parse_args(argv)
    if args.switch_table:
        if args.write:
            write_table(args.write)
        else:
            print(switch_table(), end="")
        return 0
    presets = [item for item in args.items if "=" not in item] + (preset_names() if args.all else [])
    overrides = [item for item in args.items if "=" in item]
    if not presets:
        parser.error("name at least one preset, or --all")
    rows = [inspect_preset(preset, overrides, args.resolution) for preset in presets]
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
    elif len(rows) == 1:
        row = rows[0]
        print(f"{row['preset']} {' '.join(overrides)} at {row['resolution']}px")
        print(f"  params        {row['params'] / 1e6:10.2f} M   (+ REPA projector "
              f"{row['repa_projector_params'] / 1e6:.2f} M, training only)")
        print(f"  forward       {row['gmacs']:10.2f} GMACs = {row['gflops']:.2f} GFLOPs")
        if abs(row["train_gflops"] - row["gflops"]) > 1e-9:
            print(f"  training fwd  {row['train_gflops'] / 2:10.2f} GMACs = {row['train_gflops']:.2f} GFLOPs "
                  f"(token routing)")
        print("  components (M params):")
        for name, count in row["components"].items():
            print(f"    {name:28s} {count / 1e6:10.3f}")
    else:
        print(comparison_table(rows).to_string(float_format="{:,.2f}".format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
