"""Two lists of detections are the same detections: order-free within near-tied scores, and
compared down to a clear score gap (both lists may be cut at the NMS ``max_total``)."""

import numpy as np


def assert_same_detections(a, b, box_tol: float = 1e-3, score_tol: float = 2e-5) -> int:
    """``a``, ``b``: ``(boxes [N, 4], classes [N], scores [N])``, each sorted by score. Compares
    the top k of both, k ending at the widest score gap of the lower half of ``a`` (so that
    no detection can cross the cut); returns k."""
    (ab, ac, as_), (bb, bc, bs) = (tuple(np.asarray(x) for x in d) for d in (a, b))
    assert len(as_) > 0 and abs(len(as_) - len(bs)) <= len(as_) // 2, (len(as_), len(bs))
    gaps = -np.diff(as_)
    if len(as_) < 4:
        k = len(as_)
        assert len(bs) == k
    else:
        k = len(as_) // 2 + int(np.argmax(gaps[len(as_) // 2 :])) + 1
        assert gaps[k - 1] > 4 * score_tol, "no clear score gap to compare the lists down to"
    used = np.zeros(len(bs), bool)
    for i in range(k):
        ok = (~used) & (bc == ac[i]) & (np.abs(bs - as_[i]) <= score_tol)
        ok &= np.max(np.abs(bb - ab[i]), axis=1) <= box_tol
        assert ok.any(), f"detection {i} (class {ac[i]}, score {as_[i]}, box {ab[i]}) unmatched"
        used[np.flatnonzero(ok)[0]] = True
    assert not np.any(bs[~used] > as_[k - 1] + score_tol), "b has more detections above the cut"
    return k
