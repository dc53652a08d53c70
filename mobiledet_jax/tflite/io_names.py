"""The tensor names of every exported file, defined once (the export writes them, the runtime,
the evaluation and the clients read them).

Input: ``images`` ``[1, H, W, 3]`` RGB pixels. Outputs by kind of export:

- raw (``--outputs=raw``): ``box_encodings`` ``[1, A, 4]`` and ``class_logits`` ``[1, A, C + 1]``;
- the body a post-processing op is appended to: ``box_encodings`` and ``class_scores`` (sigmoid);
- post-processed: the four outputs of ``TFLite_Detection_PostProcess`` in the op's order, which
  Coral, Android, Frigate and MediaPipe read.
"""

INPUT = "images"
RAW_OUTPUTS = ("box_encodings", "class_logits")
SCORE_OUTPUTS = ("box_encodings", "class_scores")
POSTPROCESSED_OUTPUTS = (
    "detection_boxes",
    "detection_classes",
    "detection_scores",
    "num_detections",
)
# the serving heads of a converted body: raw logits, or sigmoid scores for the post-processing op
HEADS = {"logits": RAW_OUTPUTS, "scores": SCORE_OUTPUTS}
# the label file a file's TFLite metadata carries (an associated file, zipped after the flatbuffer):
# one name per class, after a "background" line in raw files (the class axis has C + 1 columns)
LABEL_FILE = "labelmap.txt"
