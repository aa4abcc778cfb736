#!/usr/bin/env python3
"""Build test/data/: three small real thermal/RGB pairs and their README.

Reads the registered pairs in ../shared/data/ivif (see its PROVENANCE.csv),
downscales them with area interpolation and writes

    test/data/ir/<stem>.png   single-channel 8-bit thermal
    test/data/vi/<stem>.png   8-bit RGB (TNO's visible image is gray: kept 1-channel)
    test/data/README.md       source, licence, provenance and this command

Usage (from the repository root):
    .venv/bin/python tools/make_test_data.py [--shared ../shared/data/ivif] [--out test/data]
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ros2_regionfuse.core.imageio import read_gray, read_rgb, write_png  # noqa: E402

# (set, stem, extension in shared, output width, licence as stated by the dataset)
PAIRS = [
    ('TNO', 'tno17', 'png', 256, 'CC BY 4.0 (TNO Image Fusion Dataset, Toet 2014/2022)'),
    ('MSRS', '00537D', 'png', 160, 'MIT (MSRS, Tang et al.)'),
    ('RoadScene', 'FLIR_05005', 'jpg', 256, 'none stated (RoadScene, Xu et al.; FLIR ADAS frames); '
     'research use'),
]


def _provenance(shared: Path) -> dict[str, tuple[str, str]]:
    with open(shared / 'PROVENANCE.csv', newline='') as fh:
        return {row['staged_path']: (row['source_repo@commit'], row['source_path'])
                for row in csv.DictReader(fh)}


def _resize(img, width: int):
    h, w = img.shape[:2]
    height = round(h * width / w)
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--shared', type=Path, default=REPO.parent / 'shared' / 'data' / 'ivif')
    ap.add_argument('--out', type=Path, default=REPO / 'test' / 'data')
    args = ap.parse_args()
    prov = _provenance(args.shared)
    rows = []
    for set_name, stem, ext, width, licence in PAIRS:
        ir_rel, vi_rel = f'{set_name}/ir/{stem}.{ext}', f'{set_name}/vi/{stem}.{ext}'
        ir = _resize(read_gray(args.shared / ir_rel, as_uint8=True), width)
        vi = _resize(read_rgb(args.shared / vi_rel), width)
        write_png(args.out / 'ir' / f'{stem}.png', ir)
        write_png(args.out / 'vi' / f'{stem}.png', vi)
        for rel, img in ((ir_rel, ir), (vi_rel, vi)):
            repo_commit, src = prov[rel]
            kind = 'gray' if img.ndim == 2 else 'RGB'
            rows.append(f'| `{Path(rel).parts[1]}/{stem}.png` | {img.shape[1]}x{img.shape[0]} {kind} '
                        f'| `{rel}` | {repo_commit} `{src}` | {licence} |')
    size = sum(p.stat().st_size for p in args.out.rglob('*.png'))
    readme = README.format(table='\n'.join(rows), size_kb=round(size / 1024))
    (args.out / 'README.md').write_text(readme)
    print(f'wrote {len(PAIRS)} pairs to {args.out} ({size / 1024:.0f} kB of PNG)')
    return 0


README = """# Test data

Three small, registered, real thermal/visible pairs for unit and integration
tests (CLI round trips, fusion sanity checks). Total {size_kb} kB of PNG.

Layout: `ir/<stem>.png` is the thermal image (single-channel 8-bit) and
`vi/<stem>.png` the visible image (8-bit RGB; TNO's visible camera is gray, so
`vi/tno17.png` is single-channel) of the same pair, at the same size.

| file | size | staged in ../shared/data/ivif | original (repository@commit, path) | licence as stated |
|---|---|---|---|---|
{table}

How they were made: `.venv/bin/python tools/make_test_data.py` (reads
`../shared/data/ivif`, converts thermal to gray with BT.601 luma where a file
is stored 3-channel, downscales to the width listed in the script with
`cv2.INTER_AREA`, keeping the aspect ratio, and writes PNG). All three pairs
come from the common *test* splits (TNO `tno_didfuse_auif_test40`, MSRS
`official_test_subset`, RoadScene `roadscene_didfuse_auif_test40`), which the
project never trains on, so tests that compare the shipped weights against a
baseline on them use held-out images.

Licences: TNO is CC BY 4.0 (attribution: TNO Image Fusion Dataset, A. Toet,
figshare, doi:10.6084/m9.figshare.1008029); MSRS is MIT (Tang et al.,
PIAFusion). RoadScene states no licence; its images are crops of FLIR ADAS
frames and are redistributed widely for research; this one small downscaled
pair is included for research testing only and can be replaced by another
MSRS pair if that is a concern (edit `PAIRS` in the script and re-run it).
"""


if __name__ == '__main__':
    sys.exit(main())
