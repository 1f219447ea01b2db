"""Text completers for LLM critics: a chat in, the model's reply out.

- `VLLMCompleter`: an in-process vLLM engine (`sample.engine.Engine`) behind a `DynamicBatcher`;
  the engine is built, fed and read on one worker thread, so the event loop never blocks on it.
  Prompts longer than the context keep their head and tail (the chat header and the answer).
- `OpenAICompleter`: any OpenAI-compatible server (vLLM, SGLang, a hosted API) over async httpx;
  the server batches. Connection errors, 429 and 5xx are `BackendUnavailable` (clients retry);
  a 400 (e.g. prompt too long) is `InvalidRequest`.
- `SGLangCompleter`: an in-process `sglang.Engine` (GPU nodes only; it batches internally).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ixt_stream.critique.backend import BackendUnavailable, InvalidRequest
from ixt_stream.critique.batcher import DynamicBatcher
from ixt_stream.critique.llm import Messages, render_chat, render_plain


def fit_tokens(ids: list[int], limit: int) -> list[int]:
    """Cut the middle out of an over-long prompt: keep the chat header and the generation prompt."""
    if len(ids) <= limit:
        return ids
    head = limit // 2
    return ids[:head] + ids[len(ids) - (limit - head):]


class VLLMCompleter:
    """An instruct model on in-process vLLM, dynamically batched.

    Args:
        model_dir: Hugging Face model folder of the critic.
        max_model_len: context length; prompts are cut to `max_model_len - max_new_tokens` tokens.
        max_batch_size, batch_wait_ms: dynamic batching (see `DynamicBatcher`).
    """

    def __init__(self, model_dir: str, *, dtype: str = "bfloat16", max_model_len: int = 2048,
                 max_new_tokens: int = 192, temperature: float = 0.0, kv_cache_gib: int = 1,
                 threads: int = 1, seed: int = 0, max_batch_size: int = 32, batch_wait_ms: float = 5.0):
        from ixt_stream.sample.engine import Engine

        if max_new_tokens >= max_model_len:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) must be < max_model_len ({max_model_len})")
        self.model_id = model_dir
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.max_prompt_tokens = max_model_len - max_new_tokens
        executor = ThreadPoolExecutor(1, thread_name_prefix="vllm-critic")
        self.engine = executor.submit(Engine, model_dir, dtype=dtype, max_model_len=max_model_len,
                                      kv_cache_gib=kv_cache_gib, threads=threads, seed=seed).result()
        self.tokenizer = self.engine.tokenizer()
        self.batcher = DynamicBatcher(self._generate, max_batch_size, batch_wait_ms, executor=executor)

    def _generate(self, chats: list[Messages]) -> list[str]:
        """Runs on the engine thread: render, tokenize, cut to fit, generate."""
        prompts = [fit_tokens(self.tokenizer.encode(render_chat(self.tokenizer, m), add_special_tokens=False),
                              self.max_prompt_tokens) for m in chats]
        outs = self.engine.generate(prompts, n=1, max_new_tokens=self.max_new_tokens,
                                    temperature=self.temperature)
        return [o[0].text for o in outs]

    async def complete(self, messages: Messages) -> str:
        return await self.batcher.submit(messages)

    async def aclose(self) -> None:
        await self.batcher.aclose()


class OpenAICompleter:
    """A remote OpenAI-compatible endpoint.

    Args:
        base_url: e.g. "http://127.0.0.1:8000/v1".
        model: the served model name; empty = the first one `GET /models` lists.
        api: "chat" (/chat/completions; the server applies the chat template) or "completions"
            (/completions with a plain-text prompt, for base models).
        api_key: sent as a bearer token when non-empty.
    """

    def __init__(self, base_url: str, model: str = "", *, api: str = "chat", api_key: str = "",
                 max_new_tokens: int = 192, temperature: float = 0.0, timeout_s: float = 120.0,
                 max_connections: int = 64):
        import httpx

        if api not in ("chat", "completions"):
            raise ValueError(f"api must be chat or completions, not {api!r}")
        self.api = api
        self.base_url = base_url.rstrip("/") + "/"
        self.model_id = model
        self.params = {"max_tokens": max_new_tokens, "temperature": temperature}
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s,
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        import httpx

        try:
            r = await self._http.request(method, path, json=body)
        except httpx.TransportError as e:
            raise BackendUnavailable(f"critic endpoint {self.base_url}{path}: {type(e).__name__}: {e}") from e
        if r.status_code == 429 or r.status_code >= 500:
            raise BackendUnavailable(f"critic endpoint answered {r.status_code}: {r.text[:300]}")
        if r.status_code == 400:
            raise InvalidRequest(f"critic endpoint refused the request: {r.text[:300]}")
        r.raise_for_status()
        return r.json()

    async def complete(self, messages: Messages) -> str:
        if not self.model_id:
            self.model_id = (await self._request("GET", "models"))["data"][0]["id"]
        if self.api == "chat":
            body = {"model": self.model_id, "messages": messages, **self.params}
            choice = (await self._request("POST", "chat/completions", body))["choices"][0]
            return choice["message"]["content"] or ""
        body = {"model": self.model_id, "prompt": render_plain(messages), **self.params}
        return (await self._request("POST", "completions", body))["choices"][0]["text"]

    async def aclose(self) -> None:
        await self._http.aclose()


SGLANG_MISSING = (
    "backend=sglang needs the sglang package, which serves on GPU nodes only "
    "(pip install 'ixt-stream[gpu]'); on CPU use backend=vllm, or backend=openai against a server"
)


class SGLangCompleter:
    """An in-process SGLang engine. Raises RuntimeError with the fix when sglang is missing."""

    def __init__(self, model_dir: str, *, dtype: str = "bfloat16", max_model_len: int = 2048,
                 max_new_tokens: int = 192, temperature: float = 0.0, seed: int = 0):
        try:
            import sglang
        except ImportError as e:
            raise RuntimeError(SGLANG_MISSING) from e
        from ixt_stream.models import load_tokenizer

        self.model_id = model_dir
        self.tokenizer = load_tokenizer(model_dir)
        self.params = {"max_new_tokens": max_new_tokens, "temperature": temperature}
        self.engine = sglang.Engine(model_path=model_dir, dtype=dtype, context_length=max_model_len,
                                    random_seed=seed, log_level="error")

    async def complete(self, messages: Messages) -> str:
        out = await self.engine.async_generate(prompt=render_chat(self.tokenizer, messages),
                                               sampling_params=self.params)
        return out["text"]

    async def aclose(self) -> None:
        self.engine.shutdown()
