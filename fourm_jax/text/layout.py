"""4M's fixed token layout, shared by every text vocabulary (WordPiece or SentencePiece).

ids 0..3 are PAD, UNK, SOS, EOS; 4..203 the sentinels [S_0]..[S_199]; 204..4203 the value tokens
v0=0..v3=999 (`id = 204 + 1000 k + n`); 4204..4283 the 80 COCO class names, alphabetical; learned
pieces follow. Span masking numbers sentinels from [S_1]; [S_0] is never emitted.
"""

PAD_ID = 0
UNK_ID = 1
SOS_ID = 2
EOS_ID = 3
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[SOS]", "[EOS]")

SENTINEL_OFFSET = 4
NUM_SENTINELS = 200
FIRST_SENTINEL_ID = SENTINEL_OFFSET + 1  # [S_1], the first sentinel span masking emits

VALUE_OFFSET = SENTINEL_OFFSET + NUM_SENTINELS  # 204
NUM_VALUE_TYPES = 4  # v0, v1, v2, v3
VALUE_BINS = 1000

CLASS_OFFSET = VALUE_OFFSET + NUM_VALUE_TYPES * VALUE_BINS  # 4204

COCO_CLASSES = (
    "airplane", "apple", "backpack", "banana", "baseball bat", "baseball glove", "bear", "bed",
    "bench", "bicycle", "bird", "boat", "book", "bottle", "bowl", "broccoli", "bus", "cake", "car",
    "carrot", "cat", "cell phone", "chair", "clock", "couch", "cow", "cup", "dining table", "dog",
    "donut", "elephant", "fire hydrant", "fork", "frisbee", "giraffe", "hair drier", "handbag",
    "horse", "hot dog", "keyboard", "kite", "knife", "laptop", "microwave", "motorcycle", "mouse",
    "orange", "oven", "parking meter", "person", "pizza", "potted plant", "refrigerator", "remote",
    "sandwich", "scissors", "sheep", "sink", "skateboard", "skis", "snowboard", "spoon",
    "sports ball", "stop sign", "suitcase", "surfboard", "teddy bear", "tennis racket", "tie",
    "toaster", "toilet", "toothbrush", "traffic light", "train", "truck", "tv", "umbrella", "vase",
    "wine glass", "zebra",
)
FIRST_LEARNED_ID = CLASS_OFFSET + len(COCO_CLASSES)  # 4284


def sentinel_token(i: int) -> str:
    return f"[S_{i}]"


def sentinel_id(i: int) -> int:
    """Id of [S_i]."""
    if not 0 <= i < NUM_SENTINELS:
        raise ValueError(f"sentinel index {i} is outside [0, {NUM_SENTINELS})")
    return SENTINEL_OFFSET + i


def is_sentinel(token_id: int) -> bool:
    return SENTINEL_OFFSET <= token_id < SENTINEL_OFFSET + NUM_SENTINELS


def value_token(kind: int, value: int) -> str:
    """The value token `v<kind>=<value>` (kind 0..3, value 0..999)."""
    return f"v{kind}={value}"


def value_id(kind: int, value: int) -> int:
    if not (0 <= kind < NUM_VALUE_TYPES and 0 <= value < VALUE_BINS):
        raise ValueError(f"value token v{kind}={value} is outside v0..v{NUM_VALUE_TYPES - 1}, "
                         f"0..{VALUE_BINS - 1}")
    return VALUE_OFFSET + VALUE_BINS * kind + value


def special_tokens() -> list[str]:
    """Every token with a fixed id, in id order (ids 0..FIRST_LEARNED_ID-1)."""
    return (list(SPECIAL_TOKENS) + [sentinel_token(i) for i in range(NUM_SENTINELS)]
            + [value_token(k, n) for k in range(NUM_VALUE_TYPES) for n in range(VALUE_BINS)]
            + list(COCO_CLASSES))
