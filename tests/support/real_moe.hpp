#pragma once
// The real qwen3moe-18M-en checkpoint with short calibration and evaluation token streams, shared by
// the MoE recipe tests' real-model cases (test_moe_recipes, test_mobie, test_kbvq_moe).
#include <lowbit/io/text_corpus.hpp>
#include <lowbit/model/checkpoint.hpp>

#include <doctest/doctest.h>

#include "models.hpp"

#include <cstddef>
#include <vector>

namespace lowbit_test {

/// The float qwen3moe-18M-en model and tokenizer, `calib` (the first `calib_docs` documents of
/// text-en/calib.jsonl) and `dev` (the first `dev_docs` of text-en/dev.jsonl), each ≥ 256 tokens.
struct real_moe {
    lowbit::opened_model fp;
    std::vector<int> calib;
    std::vector<int> dev;
};

inline real_moe open_real_moe(std::size_t calib_docs = 6, std::size_t dev_docs = 3) {
    real_moe r{lowbit::open_model(qwen3moe18m()), {}, {}};
    auto docs = lowbit::io::read_text_documents(models_dir() / "text-en" / "calib.jsonl");
    docs.resize(calib_docs);
    r.calib = r.fp.tokenizer.encode_documents(docs);
    auto dev_docs_text = lowbit::io::read_text_documents(models_dir() / "text-en" / "dev.jsonl");
    dev_docs_text.resize(dev_docs);
    r.dev = r.fp.tokenizer.encode_documents(dev_docs_text);
    REQUIRE(r.calib.size() >= 256);
    REQUIRE(r.dev.size() >= 256);
    return r;
}

} // namespace lowbit_test
