"""Recognition across exchanges (一地上架,全国互认): peers, member credentials, recognitions,
and the signed listing feed peers pull."""
