"""Built-in tools: plug-ins written exactly as a user writes a custom tool."""
