-- Whether a tenant's PII policy applies to Teach content too, not only to ingested messages.
-- On by default (and for existing tenants): what an application teaches is as likely to carry
-- an email or a card number as what its users say.
ALTER TABLE tenants ADD COLUMN scrub_teach boolean NOT NULL DEFAULT true;
