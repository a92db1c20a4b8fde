"""The rank study (``tuckerref study ranks``): accuracy against FLOPs against measured time over a rank grid.

:mod:`.grid` (grid specifications), :mod:`.points` (one point: train and time), :mod:`.executor`
(local processes or a Dask cluster), :mod:`.records` (the record log and CSV), :mod:`.plots`,
:mod:`.run` (the whole study); :mod:`.folds` (``train --kfold``'s folds as tasks for the same executors).
"""
