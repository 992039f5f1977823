"""Write ``diabetes.csv`` from scikit-learn's bundled diabetes data (Efron et al. 2004).

442 patients; features age, bmi, bp (blood pressure) and six serum measurements s1–s6, in their
original units; ``sex`` (coded 1/2 in the source) is the sensitive attribute; the target
``high_progression`` is 1 when the disease-progression score one year after baseline is above
its median (140.5), else 0. Run: ``python platform/otu/tabular/data/make_diabetes.py``.
"""

from __future__ import annotations

from pathlib import Path

from sklearn.datasets import load_diabetes


def main() -> None:
    frame = load_diabetes(as_frame=True, scaled=False).frame
    progression = frame.pop("target")
    frame["sex"] = frame["sex"].astype(int)
    frame["high_progression"] = (progression > progression.median()).astype(int)
    frame.to_csv(Path(__file__).with_name("diabetes.csv"), index=False)


if __name__ == "__main__":
    main()
