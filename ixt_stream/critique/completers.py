"""Text completers for LLM critics: a chat in, the model's reply out.

- `VLLMCompleter`: an in-process vLLM engine (`sample.engine.Engine`) behind a `DynamicBatcher`;
  the engine is built, fed and read on one worker thread, so the event loop never blocks on it.
  Prompts longer than the context keep their head and tail (the chat header and the answer).
- `OpenAICompleter`: any OpenAI-compatible server (vLLM, SGLang, a hosted API) over async httpx;
  the server batches. Connection errors, timeouts, 429 and 5xx, an error object or a body that is
  not JSON, no choices, or a reply with no text (`content: null`) are `BackendUnavailable`
  (clients retry with backoff), each naming the endpoint, its status and its own message; a 400
  (e.g. prompt too long) is `InvalidRequest`; other statuses (401, 404) fail without a retry.
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
                 max_new_tokens: int = 192, temperature: float = 0.0, top_p: float = 1.0, kv_cache_gib: int = 1,
                 threads: int = 1, seed: int = 0, max_batch_size: int = 32, batch_wait_ms: float = 5.0):
        from ixt_stream.sample.engine import Engine

        if max_new_tokens >= max_model_len:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) must be < max_model_len ({max_model_len})")
        self.model_id = model_dir
        self.max_new_tokens = max_new_tokens
        self.temperature, self.top_p = temperature, top_p
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
                                    temperature=self.temperature, top_p=self.top_p)
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
                 max_new_tokens: int = 192, temperature: float = 0.0, top_p: float = 1.0, timeout_s: float = 120.0,
                 max_connections: int = 64):
        import httpx

        if api not in ("chat", "completions"):
            raise ValueError(f"api must be chat or completions, not {api!r}")
        self.api = api
        self.base_url = base_url.rstrip("/") + "/"
        self.model_id = model
        self.params = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s,
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        """The endpoint's JSON object; every failure names the endpoint, its status and its message."""
        import httpx

        where = f"critic endpoint {self.base_url}{path}"
        try:
            r = await self._http.request(method, path, json=body)
        except httpx.TransportError as e:  # connection refused, reset, timeouts
            raise BackendUnavailable(f"{where}: {type(e).__name__}: {e}") from e
        if r.status_code == 429 or r.status_code >= 500:
            raise BackendUnavailable(f"{where} answered {r.status_code}: {_upstream_message(r)}")
        if r.status_code == 400:
            raise InvalidRequest(f"{where} refused the request: {_upstream_message(r)}")
        if not r.is_success:  # 401, 403, 404, ...: a setup problem, retrying does not help
            raise RuntimeError(f"{where} answered {r.status_code}: {_upstream_message(r)}")
        try:
            data = r.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise BackendUnavailable(f"{where} answered {r.status_code} with a body that is not a JSON object "
                                     f"({r.headers.get('content-type', 'no content type')}): {r.text[:200]!r}")
        if "error" in data:
            raise BackendUnavailable(f"{where} answered {r.status_code} with an error: {_upstream_message(r)}")
        return data

    async def complete(self, messages: Messages) -> str:
        """The reply text. BackendUnavailable (retried) when the body has no choice or no text."""
        if not self.model_id:
            models = await self._request("GET", "models")
            try:
                self.model_id = models["data"][0]["id"]
            except (KeyError, IndexError, TypeError):
                raise BackendUnavailable(f"critic endpoint {self.base_url}models lists no model: "
                                         f"{str(models)[:200]}") from None
        if self.api == "chat":
            body = {"model": self.model_id, "messages": messages, **self.params}
            path, key = "chat/completions", "message"
        else:
            body = {"model": self.model_id, "prompt": render_plain(messages), **self.params}
            path, key = "completions", "text"
        data = await self._request("POST", path, body)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise BackendUnavailable(f"critic endpoint {self.base_url}{path} answered without choices: "
                                     f"{str(data)[:200]}")
        reply = choices[0].get(key)
        text = reply.get("content") if isinstance(reply, dict) else reply
        if not isinstance(text, str) or not text.strip():
            extra = " (only reasoning_content)" if isinstance(reply, dict) and reply.get("reasoning_content") else ""
            raise BackendUnavailable(f"critic endpoint {self.base_url}{path} gave no text{extra}, finish_reason "
                                     f"{choices[0].get('finish_reason')!r}: no feedback")
        return text

    async def aclose(self) -> None:
        await self._http.aclose()


def _upstream_message(r) -> str:
    """The upstream's own error message (OpenAI `{"error": {"message"}}` or plain text), shortened."""
    try:
        error = r.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:300]
    if isinstance(error, str):
        return error[:300]
    return r.text[:300]


SGLANG_MISSING = (
    "backend=sglang needs the sglang package, which serves on GPU nodes only "
    "(pip install 'ixt-stream[gpu]'); on CPU use backend=vllm, or backend=openai against a server"
)


class SGLangCompleter:
    """An in-process SGLang engine. Raises RuntimeError with the fix when sglang is missing."""

    def __init__(self, model_dir: str, *, dtype: str = "bfloat16", max_model_len: int = 2048,
                 max_new_tokens: int = 192, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0):
        try:
            import sglang
        except ImportError as e:
            raise RuntimeError(SGLANG_MISSING) from e
        from ixt_stream.models import load_tokenizer

        self.model_id = model_dir
        self.tokenizer = load_tokenizer(model_dir)
        self.params = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        self.engine = sglang.Engine(model_path=model_dir, dtype=dtype, context_length=max_model_len,
                                    random_seed=seed, log_level="error")

    async def complete(self, messages: Messages) -> str:
        out = await self.engine.async_generate(prompt=render_chat(self.tokenizer, messages),
                                               sampling_params=self.params)
        return out["text"]

    async def aclose(self) -> None:
        self.engine.shutdown()
