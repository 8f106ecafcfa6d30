"""The chat world: what a person teaches a deployed instruct model, each checked by code (facts it cannot know,
stated preference rules), over general prompts from a published set; the plug-in is ``plugin.py``."""
