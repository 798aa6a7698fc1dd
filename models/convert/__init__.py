"""flaxzoo.models.convert: Hugging Face checkpoints in and out, from local files only.

load_hf_bert(directory, architecture=None) -> (BertConfig, model)
save_hf_bert(model, directory)             -> a directory `transformers` loads
bert_config_from_hf(config_json_dict), bert_from_hf_weights(tensors, config, architecture)
load_hf_gpt2(directory) -> (GPTConfig, GPT); save_hf_gpt2(model, directory)
gpt2_config_from_hf(config_json_dict), gpt2_from_hf_weights(tensors, config)
load_hf_t5(directory) -> (T5Config, T5); save_hf_t5(model, directory)
t5_config_from_hf(config_json_dict), t5_from_hf_weights(tensors, config)
"""

from flaxzoo.models.convert.bert import (
    bert_config_from_hf,
    bert_from_hf_weights,
    load_hf_bert,
    save_hf_bert,
)
from flaxzoo.models.convert.gpt2 import (
    gpt2_config_from_hf,
    gpt2_from_hf_weights,
    load_hf_gpt2,
    save_hf_gpt2,
)
from flaxzoo.models.convert.t5 import load_hf_t5, save_hf_t5, t5_config_from_hf, t5_from_hf_weights

__all__ = ["bert_config_from_hf", "bert_from_hf_weights", "gpt2_config_from_hf",
           "gpt2_from_hf_weights", "load_hf_bert", "load_hf_gpt2", "save_hf_bert",
           "save_hf_gpt2", "load_hf_t5", "save_hf_t5", "t5_config_from_hf", "t5_from_hf_weights"]
