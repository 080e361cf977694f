"""The official OpenAI and Ollama Python clients, pointed at an agentmesh proxy port.

    llm_clients.py openai BASE_URL MODEL PROMPT     chat, streamed chat, model list
    llm_clients.py ollama HOST MODEL PROMPT         chat, streamed chat, generate, list
    llm_clients.py openai-error BASE_URL MODEL PROMPT
    llm_clients.py ollama-error HOST MODEL PROMPT

Prints one JSON object on stdout. The *-error modes expect the call to fail and report the
status and message the client parsed out of the error body.
"""

import json
import sys


def openai_mode(base_url, model, prompt):
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused-the-mesh-authenticates", max_retries=0)
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    models = [m.id for m in client.models.list()]
    return {
        "chat": chat.choices[0].message.content,
        "usage": chat.usage.total_tokens,
        "stream": "".join(pieces),
        "chunks": len(pieces),
        "models": models,
    }


def ollama_mode(host, model, prompt):
    import ollama

    client = ollama.Client(host=host)
    chat = client.chat(model=model, messages=[{"role": "user", "content": prompt}])
    pieces = [
        part["message"]["content"]
        for part in client.chat(model=model, messages=[{"role": "user", "content": prompt}], stream=True)
    ]
    gen = client.generate(model=model, prompt=prompt)
    models = [m.model for m in client.list().models]
    return {
        "chat": chat["message"]["content"],
        "stream": "".join(pieces),
        "chunks": len(pieces),
        "generate": gen["response"],
        "models": models,
    }


def openai_error(base_url, model, prompt):
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
    except openai.APIStatusError as e:
        return {"status": e.status_code, "class": type(e).__name__, "message": e.message}
    return {"status": 200}


def ollama_error(host, model, prompt):
    import ollama

    try:
        ollama.Client(host=host).chat(model=model, messages=[{"role": "user", "content": prompt}])
    except ollama.ResponseError as e:
        return {"status": e.status_code, "class": type(e).__name__, "message": e.error}
    return {"status": 200}


MODES = {
    "openai": openai_mode,
    "ollama": ollama_mode,
    "openai-error": openai_error,
    "ollama-error": ollama_error,
}

if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    print(json.dumps(MODES[mode](*args)))
