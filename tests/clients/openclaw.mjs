// OpenClaw's own client code against the proxy, as OpenClaw 2026.9.6 uses it for a custom provider with
// api "openai-completions" (see /work/shared/docs/openai-client-contract.md §1):
//   node openclaw.mjs turn BASE_URL PROMPT [--system TEXT] [--reasoning] [--host openclaw|inert]
//     one agent turn through the managed transport of @openclaw/ai (createOpenAICompletionsTransportStreamFn,
//     what the agent runtime maps "openai-completions" to; it drives openai-node 7.15.0, a dependency of
//     @openclaw/ai). Prints {request, events, message}: the body OpenClaw sent, the event types it emitted and
//     its final assistant message (content, stopReason, usage, errorMessage).
//     --host openclaw (default) gives the library the host policy through which the OpenClaw app decides these
//     requests' compat defaults: its classification of a configured loopback base URL
//     (src/agents/provider-attribution.ts: endpointClass "local", an explicit proxy-like endpoint), so the body is
//     the app's (no store, no reasoning_effort, system role, stream usage). --host inert keeps the library's inert
//     host, as a program embedding @openclaw/ai without OpenClaw has it (it then sends store and reasoning_effort).
//   node openclaw.mjs probe BASE_URL
//     the onboarding "Connection Test" (openclaw src/commands/onboard-custom*: buildOpenAiVerificationProbeRequest +
//     requestVerification, which is not in @openclaw/ai): a non-streaming POST {BASE_URL}/chat/completions of
//     {"model","messages":[{"role":"user","content":"Hi"}],"max_tokens":16,"stream":false}, judged as OpenClaw
//     judges it (2xx and a JSON content type, 30 s timeout). Prints {ok, status, content_type, body}.
// The key comes from OPENAI_API_KEY, else "local" (OpenClaw's documented marker for loopback providers).
import { parseArgs } from "node:util";
import { load, version } from "./cli_modules.mjs";

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    system: { type: "string" },
    reasoning: { type: "boolean", default: false },
    host: { type: "string", default: "openclaw" },
  },
});
const [mode, baseUrl, prompt] = positionals;
const apiKey = process.env.OPENAI_API_KEY || "local";
const MODEL_ID = "claude-code";

async function turn() {
  const { createOpenAICompletionsTransportStreamFn } = await load("@openclaw/ai/transports");
  if (values.host === "openclaw") {
    const { configureAiTransportHost } = await load("@openclaw/ai");
    configureAiTransportHost({
      resolveProviderRequestCapabilities: () => ({
        endpointClass: "local",
        knownProviderFamily: "",
        supportsNativeStreamingUsageCompat: false,
        supportsOpenAICompletionsStreamingUsageCompat: false,
        usesExplicitProxyLikeEndpoint: true,
        allowsAnthropicServiceTier: false,
      }),
    });
  } else if (values.host !== "inert") {
    throw new Error(`unknown --host ${values.host}: use openclaw or inert`);
  }
  const model = {
    id: MODEL_ID,
    name: "Claude Code (proxy)",
    api: "openai-completions",
    provider: "claude-code-proxy",
    baseUrl,
    reasoning: values.reasoning,
    input: ["text"],
    cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 },
    contextWindow: 200_000,
    maxTokens: 4096,
  };
  const context = {
    systemPrompt: values.system,
    messages: [{ role: "user", content: prompt, timestamp: Date.now() }],
  };
  let request = null;
  const stream = await createOpenAICompletionsTransportStreamFn()(model, context, {
    apiKey,
    onPayload: (payload) => {
      request = structuredClone(payload);
      return undefined;
    },
  });
  const events = [];
  for await (const event of stream) events.push(event.type);
  const message = await stream.result();
  return {
    openclaw_ai_version: version("@openclaw/ai"),
    request,
    events,
    message: {
      content: message.content,
      stopReason: message.stopReason,
      usage: message.usage,
      errorMessage: message.errorMessage ?? null,
      responseId: message.responseId ?? null,
    },
  };
}

async function probe() {
  const endpoint = new URL("chat/completions", baseUrl.endsWith("/") ? baseUrl : `${baseUrl}/`).href;
  const body = { model: MODEL_ID, messages: [{ role: "user", content: "Hi" }], max_tokens: 16, stream: false };
  const response = await fetch(endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${apiKey}` },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(30_000),
  });
  const contentType = response.headers.get("content-type") ?? "";
  const mediaType = contentType.split(";", 1)[0].trim().toLowerCase();
  const json = !contentType.trim() || mediaType === "application/json" || mediaType.endsWith("+json");
  const text = await response.text();
  return { ok: response.ok && json, status: response.status, content_type: contentType, body: JSON.parse(text) };
}

const result = mode === "turn" ? await turn() : mode === "probe" ? await probe() : null;
if (!result) throw new Error(`unknown mode ${mode}: use turn or probe`);
console.log(JSON.stringify(result));
