"""The chat web UI: a Streamlit app, its own process, that talks only to the gateway.

Page logic lives in plain modules (`client`: the gateway's API; `stream`: reading an answer's events;
`state`: what a page shows); the Streamlit files (`app`, `views/`) only lay it out.
"""
