"""Run by tests/test_hub.py in a fresh process whose HF_ENDPOINT points at the loopback Hub server."""

import json
import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
work = Path(sys.argv[1])
stories = sys.argv[2]
c4 = sys.argv[3]
results = {}

from huggingface_hub import HfApi, ModelCard  # noqa: E402
from peft import get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

import hf_layerif  # noqa: E402
from hf_layerif.allocation import expert_allocation, sparsity_allocation  # noqa: E402
from hf_layerif.hub import load_allocation, push_allocation_to_hub  # noqa: E402
from hf_layerif.pruning import LayerIFPruner, PruningConfig  # noqa: E402

api = HfApi()
assert api.endpoint == os.environ["HF_ENDPOINT"], api.endpoint

# 1. an allocation alone
base = AutoModelForCausalLM.from_pretrained(stories)
experts = expert_allocation([1.0, 2.0, 4.0, 3.0, 0.5], 15, model=base)
push_allocation_to_hub(experts, "tester/stories-experts", local_dir=work / "upload-experts")
loaded = load_allocation("tester/stories-experts")
results["allocation_equal"] = loaded.to_json_dict() == experts.to_json_dict()
card = ModelCard.load("tester/stories-experts")
results["allocation_card"] = {"library_name": card.data.library_name, "tags": card.data.tags,
                              "has_table": "| model.layers.4 |" in card.text, "has_sign": "Koh & Liang" in card.text}

# 2. a pruned model
pruner = LayerIFPruner.from_pretrained(stories)
ratios = sparsity_allocation([1.0, 2.0, 4.0, 3.0, 0.5], 0.5, model=pruner.model)
pruner.prune(PruningConfig(method="wanda", sparsity=0.5, allocation=ratios, nsamples=4, seqlen=64, calibration=c4),
             progress=False)
pruner.push_to_hub("tester/stories-wanda", local_dir=work / "upload-pruned",
                   eval_results={"wikitext2_ppl": 123.4, "arc_easy": {"acc": 0.25, "acc_norm": 0.3, "n": 20}})
downloaded = AutoModelForCausalLM.from_pretrained("tester/stories-wanda")
results["pruned_equal"] = all(torch.equal(a, b) for a, b in zip(pruner.model.state_dict().values(),
                                                                 downloaded.state_dict().values()))
results["pruned_zeros"] = float((downloaded.model.layers[0].mlp.down_proj.weight == 0).float().mean())
card = ModelCard.load("tester/stories-wanda")
results["pruned_card"] = {"library_name": card.data.library_name, "tags": card.data.tags,
                          "model_index": bool(card.data.eval_results), "base_model": card.data.base_model}

# 3. a LoRA-MoE adapter
torch.manual_seed(0)
moe = get_peft_model(AutoModelForCausalLM.from_pretrained(stories), experts.to_peft_config(r=4, task_type="CAUSAL_LM"))
with torch.no_grad():
    for name, param in moe.named_parameters():
        if "layerif_B" in name:
            param.normal_(std=0.05)
push_allocation_to_hub(experts, "tester/stories-moe", model=moe, local_dir=work / "upload-moe")
ids = torch.randint(3, 500, (2, 9), generator=torch.Generator().manual_seed(1))
moe.eval()
reloaded = hf_layerif.load_model(AutoModelForCausalLM.from_pretrained(stories), "tester/stories-moe").eval()
results["moe_equal"] = bool(torch.equal(reloaded(input_ids=ids).logits, moe(input_ids=ids).logits))
card = ModelCard.load("tester/stories-moe")
results["moe_card"] = {"library_name": card.data.library_name, "tags": card.data.tags,
                       "import_note": "import hf_layerif" in card.text}
results["token_written"] = any(os.environ["HF_TOKEN"] in p.read_text(errors="ignore")
                               for p in work.rglob("*") if p.is_file() and p.suffix in (".md", ".json", ".txt"))

# 4. a failed upload keeps the files and says how to retry
try:
    push_allocation_to_hub(experts, "tester/fails", local_dir=work / "upload-fails", api=HfApi(endpoint=os.environ["FAIL_ENDPOINT"]))
    results["failure"] = "no error"
except RuntimeError as err:
    results["failure"] = str(err)
results["failure_kept"] = (work / "upload-fails" / "layerif_allocation.json").exists()
print("RESULTS " + json.dumps(results))
