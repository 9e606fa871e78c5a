"""The merge engine: checkpoint reading (`safetensors_io`, `checkpoint`), streaming tensors
(`stream`, `blockwise` slices), model-wide trim passes (`global_trim`), the merge pass (`merge`) and
atomic sharded output (`output`); `device` and `models` hold the device and `transformers` loaders."""
