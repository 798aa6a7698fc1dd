"""flaxzoo.models.convert: Hugging Face checkpoints in and out, from local files only.

load_hf_bert(directory, architecture=None) -> (BertConfig, model)
save_hf_bert(model, directory)             -> a directory `transformers` loads
bert_config_from_hf(config_json_dict), bert_from_hf_weights(tensors, config, architecture)
"""

from flaxzoo.models.convert.bert import (
    bert_config_from_hf,
    bert_from_hf_weights,
    load_hf_bert,
    save_hf_bert,
)

__all__ = ["bert_config_from_hf", "bert_from_hf_weights", "load_hf_bert", "save_hf_bert"]
