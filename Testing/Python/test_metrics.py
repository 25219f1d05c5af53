"""Metrics against values worked out by hand."""
import numpy as np

from brainspineai.metrics import classification_metrics, save_confusion_png


def test_metrics_by_hand(tmp_path):
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == 4 / 6
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    assert np.isclose(m["per_class"]["b"]["precision"], 0.5)
    png = tmp_path / "cm.png"
    save_confusion_png(m["confusion_matrix"], ["a", "b", "c"], png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
