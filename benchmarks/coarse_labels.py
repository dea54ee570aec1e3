"""Coarse labels for ImageNet photos, from their class index: a `file,label` CSV for `vitscope build --labels`.

A sample with one photo per ImageNet class (such as 200 photos, every fifth class) cannot train a linear probe on
its own classes. ImageNet-1k's class indices are ordered so that contiguous ranges are coarse groups, so each
photo's group follows from the index of its WordNet-id folder (timm's ImageNet class order):

    group                   indices                              what
    dog                     151–268
    mammal                  101–106, 147–150, 269–299, 330–388   marsupials, sea mammals, wolves to pandas
    bird                    7–24, 80–100, 127–146
    fish-reptile-amphibian  0–6, 25–68, 389–397
    invertebrate            69–79, 107–126, 300–329
    artefact                398–923, 999
    food-nature             924–998                              food, landscapes, 3 people, plants, fungi

`--two` gives two groups instead: `animal` (0–397) and `object` (398–999), for small samples.

    python benchmarks/coarse_labels.py imagenet-sample-200 coarse.csv
    vitscope build ... --images imagenet-sample-200 --labels coarse.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

GROUPS: dict[str, list[tuple[int, int]]] = {  # inclusive index ranges
    "dog": [(151, 268)],
    "mammal": [(101, 106), (147, 150), (269, 299), (330, 388)],
    "bird": [(7, 24), (80, 100), (127, 146)],
    "fish-reptile-amphibian": [(0, 6), (25, 68), (389, 397)],
    "invertebrate": [(69, 79), (107, 126), (300, 329)],
    "artefact": [(398, 923), (999, 999)],
    "food-nature": [(924, 998)],
}
TWO: dict[str, list[tuple[int, int]]] = {"animal": [(0, 397)], "object": [(398, 999)]}


def group_of(index: int, groups: dict[str, list[tuple[int, int]]] = GROUPS) -> str:
    """The group of an ImageNet-1k class index (each index is in exactly one group)."""
    found = [name for name, ranges in groups.items() if any(lo <= index <= hi for lo, hi in ranges)]
    if len(found) != 1:
        raise ValueError(f"class index {index} is in {len(found)} groups")
    return found[0]


def coarse_rows(root: Path, files: list[str] | None = None, two: bool = False) -> list[tuple[str, str]]:
    """(file relative to `root`, group) for `files` (default: every image in `root`'s WordNet-id sub-folders)."""
    from vitscope.imagesets.folders import EXTENSIONS, imagenet_wnids

    index = {w: i for i, w in enumerate(imagenet_wnids())}
    if files is None:
        files = sorted(p.relative_to(root).as_posix() for p in root.glob("n*/*") if p.suffix.lower() in EXTENSIONS)
    return [(f, group_of(index[f.split("/")[0]], TWO if two else GROUPS)) for f in files]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", type=Path, help="folder with one WordNet-id sub-folder per class")
    p.add_argument("out", type=Path, help="CSV to write (file,label)")
    p.add_argument("--two", action="store_true", help="two groups: animal (0-397), object (398-999)")
    args = p.parse_args(argv)
    rows = coarse_rows(args.images, two=args.two)
    with args.out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        w.writerows(rows)
    counts: dict[str, int] = {}
    for _, g in rows:
        counts[g] = counts.get(g, 0) + 1
    print(f"{len(rows)} images: " + ", ".join(f"{g} {n}" for g, n in sorted(counts.items())), file=sys.stderr)


if __name__ == "__main__":
    main()
