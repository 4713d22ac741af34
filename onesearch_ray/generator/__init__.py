"""The CPU-first generator (issue 16): prompt embeddings -> small Qwen3 decoder -> KHQE codes -> item step.

Read in pipeline order: ``prompts`` (a search as prompt embeddings), ``model`` (the decoder and its
heads), ``lexical`` (the learned lexical term), ``codes`` (the KHQE levels), ``search`` (planned code
beams, then the item step), ``train`` (the loop), ``examples`` (training searches; ``distill``, the
cascade teacher's pseudo-queries; ``leak``, the no-leak rule), ``preference`` (DPO from the feedback
log), ``grpo`` and ``tpma`` (TPMA-GRPO on the search log), ``store`` (on disk), ``job`` (the whole
job, Ray-free), ``vllm_decoder`` (the vLLM engine), ``layout_trial`` (the generator on a candidate
KHQE layout: ``onesearch tune``'s rung 2, Ray-free).
"""
