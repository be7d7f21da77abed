"""The built-in plug-ins (tools, envs, tasks), kept at the top of the repository and installed here."""
