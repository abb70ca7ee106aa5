from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer


def test_tiny_models_load(tiny_model):
    for arch in ("bert", "distilbert", "roberta"):
        folder = tiny_model(arch)
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        out = model(**tok(["the film was great"], return_tensors="pt"))
        assert out.logits.shape == (1, 2)
    for arch in ("gpt2", "llama"):
        folder = tiny_model(arch)
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        ids = tok(["what do bees make"], return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
        assert out.shape[1] == ids["input_ids"].shape[1] + 3
