"""Option choices and defaults the parsers show, as plain values.

They are copies of constants of the engine modules (named beside each), kept here so that building
the parser imports no NumPy, Numba or h5py; ``tests/test_bad_input.py`` checks that each equals its
source, so a change in the engine that is not made here fails a test.
"""

PAPER_INPUT_SHAPE = (4, 28, 120, 160)            # tuckerref.models.PAPER_INPUT_SHAPE
OPTIMIZER_NAMES = ("adam", "sgd")                # sorted(tuckerref.optim.OPTIMIZERS)
CHECKPOINT_NAME = "checkpoint.h5"                # tuckerref.train.CHECKPOINT_NAME
PLANS = ("auto", "table2", "algorithm1")         # tuckerref.compress.PLANS
METHODS = ("hooi", "hosvd")                      # tuckerref.tucker.METHODS
ALGORITHMS = ("auto", "hooi", "hosvd")           # tuckerref.compress.ALGORITHMS
WEIGHTS_FORMATS = ("array", "blob")              # tuckerref.export.WEIGHTS_FORMATS
SYNTH_SHAPE = (28, 120, 160)                     # tuckerref.data.synthetic.DEFAULT_SHAPE
LEFT_HANDED_FRACTION = 0.15                      # tuckerref.data.synthetic.LEFT_HANDED_FRACTION
THETIS_SHOTS = ("forehand_flat", "backhand")     # tuckerref.data.thetis.DEFAULT_SHOTS
PROFILER_NAMES = ("numba", "c")                  # tuple(tuckerref.profile.PROFILERS)
DIGITS_SHAPE = (16, 48, 64)                      # tuckerref.data.digits.DEFAULT_SHAPE
DIGITS_CHANNELS = 4                              # tuckerref.data.digits.CHANNELS
DIGITS_CHANNEL_CHOICES = (1, 3, 4)               # tuckerref.data.digits.CHANNEL_CHOICES
