"""Names shared across lbt_tf, defined once: data splits, search modes, hypergradient methods,
search phases and pseudo-label kinds."""

# The five sources of one LBT search step (fields of data.splits.LBTSplits and of
# search.learner.Batches): D_t^tr, D_t^val, D_s^tr, D_s^val, D_u.
SEARCH_SOURCES = ("teacher_train", "teacher_val", "student_train", "student_val", "unlabeled")
# fasterseg searches the teacher alone: it reads only the teacher's two sources.
TEACHER_SOURCES = SEARCH_SOURCES[:2]
# The sources only the arch step reads (their batches grow with --arch_grad_batches).
ARCH_VAL_SOURCES = ("teacher_val", "student_val")
# Every split of data.splits.LBTSplits: the search sources plus the official val and test.
LBT_SPLITS = SEARCH_SOURCES + ("val", "test")
# The splits materialised as TFRecords (the test split is read only through D_u).
RECORD_SPLITS = SEARCH_SOURCES + ("val",)
# Labeled splits a trained network can be evaluated on (--eval_split).
EVAL_SPLITS = ("val", "test", "train") + SEARCH_SOURCES[:4]

SEARCH_MODES = ("fasterseg", "lpt", "lbt")
FIRST_ORDER_MODES = ("fasterseg", "lpt")     # T' = T, S' = S: no unrolling
# How lbt computes the two mixed second-derivative products of DARTS' form (search/darts.py):
# reverse-over-reverse (exact), forward-over-reverse Hessian-vector products (exact as well) or
# central differences.
HYPERGRADS = ("exact", "hvp", "finite_difference")
# How exact computes its teacher product d2 L/dA dT . v (search/reverse_over_reverse.py), and
# finite differences their perturbed passes grad_A L(T +- eps v): over the whole training pass
# at once, or one stage of the supernet at a time (search/layerwise.py, search/stagewise.py:
# recomputed, only stage boundaries kept between stages).
ARCH_PRODUCTS = ("whole", "layerwise")
# How the search's end picks each cell's op (--arch_selection, search/selection.py): the largest
# alpha, or the op whose one-hot alpha row gives the supernet's lowest val loss.
ARCH_SELECTIONS = ("argmax", "perturbation")
PHASES = ("warmup", "search")                # A frozen / A updated
PSEUDO_LABELS = ("soft", "hard")             # the real student step's pseudo-labels
# Which latency the target band steers (--latency_target_of): the derived network's prediction
# (the network the search returns), or the supernet's expected latency (FasterSeg's rule).
LATENCY_TARGETS = ("derived", "supernet")
# Keras dtype policies of the search's student: float32, or bfloat16 compute with float32
# variables, losses and hypergradient (GPU/TPU; no loss scaling); the supernet stays float32.
SEARCH_PRECISIONS = ("float32", "mixed_bfloat16")
# How the supernet's MixedOps enter a traced step (--cell_tracing): each traced where it runs,
# or one tf.function per distinct cell configuration, called (not inlined) wherever such a cell
# runs, so the step's graph holds each distinct cell and its derivatives once.
CELL_TRACINGS = ("shared", "per_cell")
