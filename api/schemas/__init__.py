"""The pydantic models of the API's requests and answers (api.contract turns them into OpenAPI)."""
