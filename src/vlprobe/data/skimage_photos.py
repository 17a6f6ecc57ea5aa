"""``skimage_photos``: the sample photographs scikit-image ships, as one unlabelled split.

Read from the image files inside the installed ``skimage/data`` folder (found without importing
scikit-image); grayscale photos are converted to RGB when decoded. Ids are the photo names
(``astronaut``, ``chelsea``, ...). ``options.names`` selects some of them (default: every one
in :data:`PHOTOS` that the installed version bundles); ``options.split`` names the split
(default ``train``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from vlprobe.data._common import bytes_image_source, check_on_error, dataset_name, provenance
from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import DataError

LOADER = "skimage_photos"
# name -> file in skimage/data (the photographs; textures, masks and test patterns left out)
PHOTOS = {
    "astronaut": "astronaut.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "moon": "moon.png",
    "motorcycle": "motorcycle_left.png",
    "page": "page.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "text": "text.png",
}


def skimage_data_dir() -> Path:
    """The ``skimage/data`` folder of the installed scikit-image."""
    found = importlib.util.find_spec("skimage")
    if found is None or not found.submodule_search_locations:
        raise DataError("skimage_photos needs scikit-image: pip install 'vlprobe[images]'")
    return Path(next(iter(found.submodule_search_locations))) / "data"


def load_skimage_photos(spec: Any) -> dict[str, Stimuli]:
    """scikit-image's bundled photos (see the module docstring)."""
    options = dict(spec.options)
    check_on_error(spec)
    folder = skimage_data_dir()
    wanted = options.get("names")
    if wanted is not None:
        unknown = [n for n in wanted if n not in PHOTOS]
        if unknown:
            raise DataError(f"{LOADER}: unknown photo(s) {unknown}; known: {sorted(PHOTOS)}")
    names = [n for n in (wanted or PHOTOS) if (folder / PHOTOS[n]).is_file()]
    if wanted is not None and len(names) < len(wanted):
        missing = sorted(set(wanted) - set(names))
        raise DataError(f"{LOADER}: this scikit-image does not bundle {missing} in {folder}")
    if not names:
        raise DataError(f"{LOADER}: no sample photos found in {str(folder)!r}")
    blobs = [(folder / PHOTOS[n]).read_bytes() for n in names]
    split = options.get("split", "train")
    return {
        split: Stimuli(
            dataset=dataset_name(spec, LOADER),
            split=split,
            ids=list(names),
            images=bytes_image_source(blobs, [str(folder / PHOTOS[n]) for n in names]),
            source=provenance(
                LOADER,
                folder,
                options,
                files=[PHOTOS[n] for n in names],
            ),
        )
    }


__all__ = ["PHOTOS", "load_skimage_photos", "skimage_data_dir"]
