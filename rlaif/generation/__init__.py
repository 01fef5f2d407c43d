"""Generation backends: the protocol sampling and judging use (`protocol`), the factory that opens the one a
config names (`factory`), OpenAI-compatible endpoints (`openai_backend`), in-process transformers
(`transformers_backend`, with its sampler `nucleus_sampling`), chat templates without transformers
(`chat_template`) and the local server launcher (`server_launcher`).

Layer: above the base modules of `rlaif` (config, models), below judges, the pipeline and everything else.
"""
