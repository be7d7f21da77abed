"""Built-in tools: plug-ins written exactly as a user writes a custom tool.

``tools.focus`` holds the twelve chart / table focus tools, ``tools.draw`` crop, zoom and
drawing tools. Configs name them as modules (``tools.focus``), entry points
(``chart_table_focus``, ``drawing``) or single tools (``zoom_in``).
"""
