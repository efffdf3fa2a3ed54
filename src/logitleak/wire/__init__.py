"""The OpenAI wire format both servers share: error bodies, body reading, access logs without credentials."""
