"""Labels of the mask-competition data: three attributes and the combined 0..17 class.

class = mask * 6 + gender * 3 + age_group, with
- mask: 0 worn (``mask1``..``mask5``), 1 worn incorrectly (``incorrect_mask``), 2 not worn (``normal``);
- gender: 0 male, 1 female;
- age_group: 0 below the first cut-off, 1 from the first up to the second, 2 from the second on.
The default cut-offs (30, 60) give the groups < 30, 30..59 and >= 60 years.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MASK_NAMES = ("wear", "incorrect", "not_worn")
GENDER_NAMES = ("male", "female")
DEFAULT_AGE_CUTOFFS = (30, 60)
# Number of classes per attribute head; a three-head model decodes back to the 0..17 class.
HEAD_SIZES = {"mask": len(MASK_NAMES), "gender": len(GENDER_NAMES), "age_group": 3}
NUM_CLASSES = len(MASK_NAMES) * len(GENDER_NAMES) * 3

# File stem (lower case, no suffix) -> mask label. A complete person folder contains one file per stem.
MASK_BY_STEM = {
    "mask1": 0,
    "mask2": 0,
    "mask3": 0,
    "mask4": 0,
    "mask5": 0,
    "incorrect_mask": 1,
    "normal": 2,
}


@dataclass(frozen=True)
class MaskLabels:
    """Attribute labels of one image, the raw age in years and the person's id string."""

    mask: int
    gender: int
    age_group: int
    age: int
    person_id: str

    @property
    def target(self) -> int:
        return encode_class(self.mask, self.gender, self.age_group)

    def as_targets(self) -> dict[str, int]:
        """Return the combined class and every attribute, the form a multi-head loss reads."""
        values = asdict(self)
        del values["person_id"]
        return {"class": self.target, **values}


def age_to_group(age: int, cutoffs: tuple[int, int] = DEFAULT_AGE_CUTOFFS) -> int:
    """Map an age in years to group 0, 1 or 2; ``cutoffs`` are the first ages of groups 1 and 2."""
    low, high = cutoffs
    if not 0 < low < high:
        raise ValueError(f"age cut-offs must satisfy 0 < first < second, got {cutoffs}")
    if age < 0:
        raise ValueError(f"age must be a non-negative number of years, got {age}")
    if age < low:
        return 0
    if age < high:
        return 1
    return 2


def encode_class(mask: int, gender: int, age_group: int) -> int:
    for name, value in (("mask", mask), ("gender", gender), ("age_group", age_group)):
        if not 0 <= value < HEAD_SIZES[name]:
            raise ValueError(f"{name} label must be in 0..{HEAD_SIZES[name] - 1}, got {value}")
    return mask * 6 + gender * 3 + age_group


def decode_class(class_id: int) -> tuple[int, int, int]:
    """Split a 0..17 class into ``(mask, gender, age_group)``."""
    if not 0 <= class_id < NUM_CLASSES:
        raise ValueError(f"class id must be in 0..{NUM_CLASSES - 1}, got {class_id}")
    return class_id // 6, (class_id // 3) % 2, class_id % 3


def age_group_names(cutoffs: tuple[int, int]) -> tuple[str, str, str]:
    low, high = cutoffs
    return (f"<{low}", f"{low}-{high - 1}", f">={high}")


def class_names(cutoffs: tuple[int, int] = DEFAULT_AGE_CUTOFFS) -> list[str]:
    """Return the 18 class names in class-id order, e.g. ``wear/male/<30``."""
    ages = age_group_names(cutoffs)
    names = []
    for class_id in range(NUM_CLASSES):
        mask, gender, age_group = decode_class(class_id)
        names.append(f"{MASK_NAMES[mask]}/{GENDER_NAMES[gender]}/{ages[age_group]}")
    return names
