"""Check `labeler export --format label-studio` folders with Label Studio's own validator
(label_studio_sdk.label_interface.LabelInterface.validate_prediction, what Label Studio runs
on predictions it imports): every prediction of tasks.json against label_config.xml.
Image tasks (rectanglelabels) and tracked video tasks (videorectangle) alike; the online
API's /predict gives the same predictions (tests/integration/test_serve*.py). Prints the
errors of each prediction that fails and exits 1 if any does.

label-studio-sdk is not a dependency (it brings pandas, OpenCV and nltk); it runs from a
virtual environment of its own, without importing labeler:

    python3 -m venv /tmp/lsvenv && /tmp/lsvenv/bin/pip install label-studio-sdk==2.1.2
    labeler export ./labels --format label-studio --out /tmp/ls
    /tmp/lsvenv/bin/python scripts/check_label_studio.py /tmp/ls [more folders ...]

Before the folders, it checks that the validator does catch a broken region (a wrong
from_name, a wrong type), so a pass means something.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

from label_studio_sdk.label_interface import LabelInterface


def broken(prediction: dict) -> list[dict]:
    """Copies of `prediction` with its first region broken in ways Label Studio refuses."""
    out = []
    for change in ({"from_name": "no-such-control"}, {"type": "choices"}):
        bad = copy.deepcopy(prediction)
        bad["result"][0].update(change)
        out.append(bad)
    return out


def check(folder: Path) -> int:
    """Predictions of the folder's tasks that Label Studio refuses (their errors printed)."""
    interface = LabelInterface((folder / "label_config.xml").read_text())
    tasks = json.loads((folder / "tasks.json").read_text())
    failed = regions = 0
    for task in tasks:
        for prediction in task.get("predictions", []):
            regions += len(prediction["result"])
            errors = interface.validate_prediction(prediction, return_errors=True)
            if errors:
                failed += 1
                print(f"{folder}: task {task['data'].get('labeler_id')}: {errors[:3]}")
            if prediction["result"] and not all(
                    interface.validate_prediction(bad, return_errors=True)
                    for bad in broken(prediction)):
                sys.exit(f"{folder}: the validator accepted a broken region; it checks nothing")
    print(f"{folder}: {len(tasks)} tasks, {regions} regions, {failed} predictions refused")
    return failed


def main(folders: list[str]) -> int:
    if not folders:
        sys.exit(__doc__)
    failed = sum(check(Path(folder)) for folder in folders)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
