"""Chat: ask questions of your documents; answers stream in and cite their sources."""

import streamlit as st

from rag import DOCUMENTS_PAGE, RagError, StoredTurn
from ui.auth import current_caller, owner_id
from ui.chat import (
    REGENERATE,
    RETRIEVAL_ONLY_HINT,
    answer_actions,
    chat_sidebar,
    conversation_actions,
    document_filter,
    render_sources,
    safe_stream,
)
from ui.errors import service_or_stop, show_error
from ui.format import md
from ui.navigation import ensure_routed
from ui.workspaces import current_workspace

ensure_routed()

st.title("Chat")
service = service_or_stop()
sid = owner_id()
workspace = current_workspace(service)
conversations = service.conversations
options = chat_sidebar(service)
caller = current_caller()
docs = service.documents(workspace.id, caller, limit=DOCUMENTS_PAGE)  # the newest: a page load never reads them all
chosen = document_filter(service, workspace.id, docs, DOCUMENTS_PAGE, caller)
options = options.model_copy(update={"doc_ids": chosen, "workspace": workspace.id})
if service.mode != "llm":
    st.info(RETRIEVAL_ONLY_HINT, icon=":material/info:")
if not docs:
    st.info(
        f"No documents are indexed in {md(workspace.label)} yet: add some on the Upload page first.",
        icon=":material/upload_file:",
    )
else:
    try:
        state = service.collection_state()
    except RagError as err:
        state = err.user_message
    if state != "loaded":
        st.warning(
            f"Milvus is not ready yet ({md(state)}), as after a restart: a question waits until the documents "
            "can be searched.",
            icon=":material/hourglass_top:",
        )

parts = {d.doc_id: d.chunks for d in docs}  # where a passage of a format without pages is: part n of parts
history = conversations.history(sid, workspace.id)
for number, turn in enumerate(history):
    with st.chat_message(turn.role):
        st.markdown(turn.safe_markdown)
        render_sources(turn.sources, service, workspace.id, key=str(turn.id), parts=parts)
        if turn.role == "assistant":
            answer_actions(conversations, sid, workspace.id, turn, last=number == len(history) - 1)

question = st.chat_input("Ask a question about your documents", key="chat.question")
if asked_again := st.session_state.pop(REGENERATE, None):
    question = asked_again
if question:
    with st.chat_message("user"):
        st.markdown(md(question))
    with st.chat_message("assistant"):
        turns = [t.as_chat_turn() for t in conversations.history(sid, workspace.id)]
        try:
            stream = service.stream_answer(question, turns, options, caller)
            st.write_stream(safe_stream(stream, service.mode))
            answer = stream.answer
        except RagError as err:
            show_error(err)
            answer = None
        if answer is not None:
            render_sources(answer.sources, parts=parts)
            conversations.append(sid, StoredTurn(role="user", content=question), workspace.id)
            conversations.append(
                sid,
                StoredTurn(role="assistant", content=answer.answer, mode=answer.mode, sources=answer.sources),
                workspace.id,
            )
            st.rerun()  # draw it again as a stored turn, with its buttons

conversation_actions(conversations, sid, workspace.id)
