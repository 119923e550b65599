"""What happens to one delivered request, from its arrival to its ack: its fate, in one place.

The flow (`desk.Deliveries`):

    arrive()   synchronous, called by the subscriber's gate before any await: a copy of a
               message_id this process holds is recognised; otherwise the request is *held*
               and its conversation turn reserved here, so turns follow delivery order.
    settle()   the held request's own task, to the end:
      claim    the run record in the coordinator (`service.coordination`): a copy of a run a
               live process holds waits for it and is then acked; a redelivered copy of a
               finished run publishes its final event if it was never published, then acks;
               a redelivered request already *started* MAX_DELIVERIES times without
               finishing is dead-lettered with `internal` (starts are counted, not deliveries:
               a request returned by a graceful shutdown was never started and costs nothing)
      wait     for its turn: the local FIFO, then the conversation's shared line
      run      `record_start`, then the run (`Answers.answer`, in service/handlers/answer.py:
               streaming to the hub and assembling the final event)
      end      publish the one final event (retried while the broker is away; the reply_to
               copy is separate and never republishes it), `finish_run`, then ack.
               Any unexpected exception on the way still ends in one `internal` event + ack.
    shutdown() cancel the consumer, nack the waiting requests back to their place (a nack
               with requeue keeps a message's position, on classic and quorum queues), let the
               running ones finish within SHUTDOWN_GRACE, then end them `cancelled`.

Hooks for cancel and double texting (§8):

    deliveries.held                       the requests this process holds (`HeldRequests`):
      .matching(message_id=, channel=)    by the §8 cancel rule
      .in_conversation(conversation_id)   of one conversation, oldest first
      each `Held` has .message_id, .channel, .conversation_id, .request and
      .state (`HeldState.WAITING` / `RUNNING` / `ENDING`)
    deliveries.end(held, error)           end one early with `error` (a `ServiceError`, e.g.
                                          `cancelled`, not retryable): a waiting one sends its
                                          error payload and failed event without running; a
                                          running one has its run task cancelled (the model
                                          stream closes) and ends with `error`. Either way one
                                          final event, then the ack. False if already ending.
    deliveries.busy(conversation_id)      held here; `deliveries.coordinator.busy(...)` asks
                                          every replica.
"""

from service.delivery.desk import Accepted, Answers, Arrival, Copy, Deliveries, Returned
from service.delivery.held import FinalEvent, Held, HeldRequests, HeldState
from service.delivery.turns import ConversationQueue, Turn

__all__ = [
    "Accepted",
    "Answers",
    "Arrival",
    "ConversationQueue",
    "Copy",
    "Deliveries",
    "FinalEvent",
    "Held",
    "HeldRequests",
    "HeldState",
    "Returned",
    "Turn",
]
