@0xd3a61c0f5e2b7a41;
# States of the cooperative-economy contracts (contracts/): the settlement
# token, the membership credential, the receivable and its invoice-number
# registration. Amounts are exact integer minor units; times are
# microseconds since the Unix epoch.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ccal::schema::contracts");

using Ledger = import "ledger.capnp";

# ccal.token: `amountMinor` units of `currency` issued by `issuer`, owned by `owner`.
struct TokenState {
  owner @0 :Ledger.Key;
  issuer @1 :Ledger.Key;
  currency @2 :Text;       # ISO 4217 style: three capital letters
  amountMinor @3 :Int64;
}

# ccal.member: a cooperative's membership credential for one member key.
struct MemberState {
  cooperative @0 :Ledger.Key;
  cooperativeName @1 :Text;
  member @2 :Ledger.Key;
  legalName @3 :Text;
  role @4 :Text;
  validFromMicros @5 :Int64;
  validUntilMicros @6 :Int64;   # exclusive
  linearId @7 :Data;            # 32 bytes
}

# ccal.receivable: an invoice of `seller` against `buyer`, owed to `holder`.
struct ReceivableState {
  seller @0 :Ledger.Key;
  buyer @1 :Ledger.Key;
  holder @2 :Ledger.Key;
  currency @3 :Text;
  amountMinor @4 :Int64;
  dueMicros @5 :Int64;
  invoiceNumber @6 :Text;
  linearId @7 :Data;            # 32 bytes
}

# ccal.receivable: the one registration of (seller, invoice number); a
# receivable's issue consumes it (see contracts/receivable.h).
struct InvoiceRegistration {
  seller @0 :Ledger.Key;
  invoiceNumber @1 :Text;
}
