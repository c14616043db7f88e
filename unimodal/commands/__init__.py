"""Commands of the CLI beyond training: planning a run, inspecting shards (above train/ and data/)."""
