"""The HTTP front: TGI's and OpenAI's routes, validation, response shaping and errors (starlette)."""
