"""Draw a seeded sample of silver coreference links on their images, for hand-checking.

    VLPROBE_REFERENCE=/path/to/reference python scripts/silver_link_sheets.py OUT_DIR [N] [SEED]

Writes OUT_DIR/sheet<k>.png (6 links each: the image with the linked boxes in red, the phrase,
its category and the caption) and OUT_DIR/sample.tsv (one row per link; fill in the
judgement). docs/silver_links_check.tsv was made with N=60, SEED=2024.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlprobe.data.silver_links import coco_split_links, spacy_pipeline


def main(out: str, n: int = 60, seed: int = 2024) -> None:
    root = Path(os.environ["VLPROBE_REFERENCE"]) / "captions" / "coco_mini"
    nlp = spacy_pipeline()
    links = [(rec, lk) for split in ("train", "val") for rec in coco_split_links(root, split, nlp)
             for lk in rec["links"]]
    pick = sorted(np.random.default_rng(seed).choice(len(links), n, replace=False))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default()
    rows = ["n\titem\tphrase\tchars\tcategory\ttype\tn_boxes\tjudgement\tnote\tcaption"]
    for sheet in range(0, n, 6):
        canvas = Image.new("RGB", (3 * 420, 2 * 400), "white")
        draw = ImageDraw.Draw(canvas)
        for k, index in enumerate(pick[sheet:sheet + 6]):
            rec, lk = links[index]
            image = Image.open(rec["file"]).convert("RGB")
            scale = min(400 / image.width, 300 / image.height)
            image = image.resize((int(image.width * scale), int(image.height * scale)))
            pen = ImageDraw.Draw(image)
            for b in lk["boxes"]:
                pen.rectangle([b[0] * image.width, b[1] * image.height, b[2] * image.width,
                               b[3] * image.height], outline="red", width=3)
            x, y = (k % 3) * 420 + 5, (k // 3) * 400 + 5
            canvas.paste(image, (x, y))
            num = sheet + k
            text = (f"#{num} [{lk['phrase']}] -> {lk['category']} ({len(lk['boxes'])} box)\n"
                    + "\n".join(textwrap.wrap(rec["caption"], 55)))
            draw.text((x, y + 303), text, fill="black", font=font)
            rows.append(f"{num}\t{rec['id']}\t{lk['phrase']}\t{lk['start']}-{lk['end']}\t"
                        f"{lk['category']}\t{lk['type']}\t{len(lk['boxes'])}\t\t\t{rec['caption']}")
        canvas.save(out_dir / f"sheet{sheet // 6}.png")
    (out_dir / "sample.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    print(f"{len(links)} links; {n} drawn to {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:4]))
