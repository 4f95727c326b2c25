"""Other stacks calling fastcot. `fastcot.integrations.transformers`: `apply_fastcot` for Hugging
Face transformers models and the "fastcot" attention implementation (imported on demand, so
`import fastcot` never imports transformers)."""
