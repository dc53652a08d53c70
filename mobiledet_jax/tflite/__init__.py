"""TFLite files: flatbuffer reading and editing (``flatbuffer``) and running a file in the LiteRT
interpreter (``runtime``). Used by evaluation (scoring a file) and export (building one)."""
