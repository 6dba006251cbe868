"""Interoperability with the Hugging Face ecosystem and the paper's own checkpoints.

    hub.py       `hf:ORG/NAME[@REVISION]` -> a local folder, through huggingface_hub
    hf_export.py a timoe expert (or a bundle's experts as of a date) as GPT2LMHeadModel
                 folders that `transformers` opens offline
    importing.py the paper code's GPTBase layout and GPT2LMHeadModel folders -> run dirs
"""
