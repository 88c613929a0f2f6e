"""OPEA's ChatQnA megaservice (opea-comps 1.5's ServiceOrchestrator) on the benchmark's stub services.

Run by bench_gateway.py with the interpreter of its own virtualenv (OPEA's import name ``comps`` collides
with ours). It builds the same 4-hop graph as GenAIExamples' ChatQnA (embedding -> retriever -> rerank
-> llm, with the align_* hooks set on the orchestrator class the way that example does) and serves
``POST /v1/chatqna`` through OPEA's MicroService on OPEA_PORT. The hooks do the same work as the
example's (request reshaping, the RAG prompt, OpenAI chunks re-encoded as ``data: b'...'``); they are
written here, not copied.

Env: OPEA_PORT, STUB_EMBEDDING, STUB_RETRIEVER, STUB_RERANKER, STUB_LLM (host:port each).
"""

import json
import os

from fastapi import Request
from fastapi.responses import StreamingResponse

from comps import MicroService, ServiceOrchestrator, ServiceRoleType, ServiceType
from comps.cores.mega.utils import handle_message
from comps.cores.proto.api_protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatMessage,
    UsageInfo,
)
from comps.cores.proto.docarray import LLMParams, RerankerParms, RetrieverParms

TEMPLATE = (
    "### You are a helpful assistant. Use the search results below; if they do not answer the question, "
    "say so.\n### Search results: {context}\n### Question: {question}\n### Answer:\n"
)


def _prompt(question, docs, chat_template):
    if chat_template and "{context}" in chat_template and "{question}" in chat_template:
        return chat_template.format(context="\n".join(docs), question=question)
    return TEMPLATE.format(context="\n".join(docs), question=question)


def align_inputs(self, inputs, cur_node, runtime_graph, llm_parameters_dict, **kwargs):
    kind = self.services[cur_node].service_type
    if kind == ServiceType.EMBEDDING:
        inputs["inputs"] = inputs.pop("text")
    elif kind == ServiceType.RETRIEVER:
        params = kwargs.get("retriever_parameters")
        if params:
            inputs.update(params.dict())
    elif kind == ServiceType.LLM:
        inputs = {
            "model": "stub-llm",
            "messages": [{"role": "user", "content": inputs["inputs"]}],
            "max_tokens": llm_parameters_dict["max_tokens"],
            "top_p": llm_parameters_dict["top_p"],
            "stream": inputs["stream"],
            "frequency_penalty": inputs["frequency_penalty"],
            "temperature": inputs["temperature"],
        }
    return inputs


def align_outputs(self, data, cur_node, inputs, runtime_graph, llm_parameters_dict, **kwargs):
    kind = self.services[cur_node].service_type
    if kind == ServiceType.EMBEDDING:
        return {"text": inputs["inputs"], "embedding": data[0]}
    if kind == ServiceType.RETRIEVER:
        docs = [d["text"] for d in data["retrieved_docs"]]
        if docs and runtime_graph.downstream(cur_node)[0].startswith("rerank"):
            return {"query": data["initial_query"], "texts": docs}
        return {"inputs": _prompt(data["initial_query"], docs, llm_parameters_dict["chat_template"])}
    if kind == ServiceType.RERANK:
        params = kwargs.get("reranker_parameters")
        top_n = params.top_n if params else 1
        kept = [inputs["texts"][best["index"]] for best in data[:top_n]]
        return {"inputs": _prompt(inputs["query"], kept, llm_parameters_dict["chat_template"])}
    if kind == ServiceType.LLM and not llm_parameters_dict["stream"]:
        return {"text": data["choices"][0]["message"]["content"]}
    return data


def align_generator(self, gen, **kwargs):
    for line in gen:
        text = line.decode("utf-8")
        start, end = text.find("{"), text.rfind("}") + 1
        if start == -1 or end <= start:
            continue
        try:
            chunk = json.loads(text[start:end])
        except json.JSONDecodeError:
            continue
        choices = chunk.get("choices") or []
        if choices and (choices[0].get("delta") or {}).get("content") is not None:
            yield f"data: {choices[0]['delta']['content'].encode('utf-8')!r}\n\n"
    yield "data: [DONE]\n\n"


def main():
    ServiceOrchestrator.align_inputs = align_inputs
    ServiceOrchestrator.align_outputs = align_outputs
    ServiceOrchestrator.align_generator = align_generator
    orchestrator = ServiceOrchestrator()

    def remote(name, env, endpoint, kind):
        host, port = os.environ[env].rsplit(":", 1)
        return MicroService(
            name=name, host=host, port=int(port), endpoint=endpoint, use_remote_service=True, service_type=kind
        )

    embedding = remote("embedding", "STUB_EMBEDDING", "/embed", ServiceType.EMBEDDING)
    retriever = remote("retriever", "STUB_RETRIEVER", "/opea/retrieval", ServiceType.RETRIEVER)
    rerank = remote("rerank", "STUB_RERANKER", "/rerank", ServiceType.RERANK)
    llm = remote("llm", "STUB_LLM", "/v1/chat/completions", ServiceType.LLM)
    orchestrator.add(embedding).add(retriever).add(rerank).add(llm)
    orchestrator.flow_to(embedding, retriever)
    orchestrator.flow_to(retriever, rerank)
    orchestrator.flow_to(rerank, llm)

    async def handle_request(request: Request):
        data = await request.json()
        stream = data.get("stream", True)
        req = ChatCompletionRequest.parse_obj(data)
        prompt = handle_message(req.messages)
        params = LLMParams(
            max_tokens=req.max_tokens or 1024,
            top_k=req.top_k or 10,
            top_p=req.top_p or 0.95,
            temperature=req.temperature or 0.01,
            frequency_penalty=req.frequency_penalty or 0.0,
            presence_penalty=req.presence_penalty or 0.0,
            repetition_penalty=req.repetition_penalty or 1.03,
            stream=stream,
            chat_template=req.chat_template or None,
            model=req.model or None,
        )
        result, graph = await orchestrator.schedule(
            initial_inputs={"text": prompt},
            llm_parameters=params,
            retriever_parameters=RetrieverParms(k=req.k or 4, fetch_k=req.fetch_k or 20),
            reranker_parameters=RerankerParms(top_n=req.top_n or 1),
        )
        for response in result.values():
            if isinstance(response, StreamingResponse):
                return response
        text = result[graph.all_leaves()[-1]]["text"]
        choice = ChatCompletionResponseChoice(
            index=0, message=ChatMessage(role="assistant", content=text), finish_reason="stop"
        )
        return ChatCompletionResponse(model="chatqna", choices=[choice], usage=UsageInfo())

    service = MicroService(
        "ChatQnAService",
        service_role=ServiceRoleType.MEGASERVICE,
        host="127.0.0.1",
        port=int(os.environ["OPEA_PORT"]),
        endpoint="/v1/chatqna",
        input_datatype=ChatCompletionRequest,
        output_datatype=ChatCompletionResponse,
    )
    service.add_route("/v1/chatqna", handle_request, methods=["POST"])
    service.start()


if __name__ == "__main__":
    main()
